"""skewless demo."""
