//! rtnetlink operations (links, addresses, routes) and network-namespace helpers.
