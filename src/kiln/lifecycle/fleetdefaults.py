"""What the policy's fleet tables are without a policy file, importable without the models
(``kiln run`` asks for the range of a network's first machine on its clock)."""

DEFAULT_RANGE = "10.231.0.0/16"  # [network] range
DEFAULT_NETWORK = "kiln"  # a group's network, kiln run's --network
NETWORK_PREFIX = 24  # one /24 per network: 253 machines, the bridge's address is .1
