"""Who is asking (X.509 certificates, RFC 3820 proxies, VOMS FQANs, WLCG tokens) and may they."""
