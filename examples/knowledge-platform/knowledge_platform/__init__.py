"""A knowledge platform on pgstack: documents, their search, and what people searched for."""
