"""The support desk: tickets, and the LLM-powered actions agents run on them."""
