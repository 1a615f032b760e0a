"""A CRM agent that keeps one provider's OAuth tokens in pgstack's token vault."""
