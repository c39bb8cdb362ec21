"""Events, markets, tokens and feed health arrive with the market-data issue (#3)."""
