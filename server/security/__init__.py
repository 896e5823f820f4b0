"""Who may do what, and where the server may connect: API keys (hashed, constant-time), signed
short-lived tokens, secret files, the outbound address policy (SSRF guard), and text from clients made
safe at the edge (``untrusted``: the one URL parser, names a filesystem refuses, log lines that cannot be
forged). May import only the foundation (``settings``, ``errors``).
"""
