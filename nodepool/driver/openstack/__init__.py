"""The OpenStack driver: REST adapter, shared server list, state machines."""
