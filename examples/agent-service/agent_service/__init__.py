"""An agent service on pgstack: workspaces, their agents, conversations, keys and audit."""
