"""What every schedule shares: the Config and its command line, the registry of
variants, the shared types and epoch outcome, the world and the partitions."""
