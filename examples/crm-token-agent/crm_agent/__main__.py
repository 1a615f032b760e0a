from crm_agent.cli import app

app(prog_name="crm-agent")
