"""Everything that speaks Finesse (XML, URLs, state names); nothing outside this package does."""
