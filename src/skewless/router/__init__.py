"""skewless router."""
