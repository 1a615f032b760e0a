"""A campaigns service on pgstack: campaigns, their members, and launching them."""
