"""skewless agent."""
