"""skewless controller."""
