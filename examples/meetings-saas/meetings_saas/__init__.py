"""A multi-tenant meetings service on pgstack: workspaces, CRM connections, meetings, mappings."""
