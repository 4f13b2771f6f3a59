package config

// FullExample returns every key with its default, in production mode, as the
// canonical sandbox.config.full-example.json. Host names and the socket path
// stay empty so that a copy of the example still derives them from the base
// domain and data dir; the network fields show their derived values because
// they cannot be set to anything else.
func FullExample() ([]byte, error) {
	c := defaults()
	c.Server.Mode = ModeProduction
	if d, err := deriveNetwork(c.Network.BridgeIP, c.Network.BridgePrefix); err == nil {
		c.Network.GuestSubnet = d.guestSubnet
		c.Network.BridgeCIDR = d.bridgeCIDR
		c.Network.BridgeNetmask = d.bridgeNetmask
	}
	return c.JSON()
}
