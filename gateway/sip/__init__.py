"""Native SIP: the sans-I/O user agent, SDP, RTP."""
