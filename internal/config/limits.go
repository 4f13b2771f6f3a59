package config

// Bounds of one sandbox's resources. Config validation (the defaults), the
// API's request schema and the lifecycle service all read these, so a
// default the config accepts is always one a create accepts.
const (
	MinVcpus    = 1
	MaxVcpus    = 8
	MinMemoryMB = 512
	MaxMemoryMB = 16384
)
