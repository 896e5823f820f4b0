"""Who may do what, and where the server may connect: API keys (hashed, constant-time), signed
short-lived tokens, secret files, and the outbound address policy (SSRF guard). May import only the
foundation (``settings``, ``errors``).
"""
