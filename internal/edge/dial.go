package edge

import "atelier/internal/network"

// DialFunc connects to a guest address; in production the default dialer,
// in tests network.DialIn for the namespace holding the bridge.
type DialFunc = network.DialFunc
