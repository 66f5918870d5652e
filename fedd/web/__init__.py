"""The HTTP/WebDAV front of fedd."""
