//! The gateway: DHCP, DNS, NAT and port forwarding for a switch, on libslirp.
