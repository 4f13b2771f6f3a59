package config

// retiredKeys are keys earlier versions accepted and never acted on. A file
// that still sets one is refused with why, rather than "unknown key", and
// rather than being read and ignored, which would tell the operator the
// setting works.
var retiredKeys = map[string]string{
	"sandbox.imagesDirectory": "was never read: sandboxes are cloned from " +
		"{sandbox.stateDir}/images/<image>.ext4 (or the LVM volume image-<image>); delete the key",
	"advanced.vm.terminal": "advanced.vm.terminal.port was never read: terminals are served by the " +
		"guest agent over its own connection (/api/sandboxes/{id}/terminals), not on a guest TCP port; delete " +
		"\"terminal\" from \"advanced.vm\"",
	"advanced.server.sshProxy": "advanced.server.sshProxy.version was never read: the SSH proxy is built into " +
		"the manager (domain.ssh.port), there is no separate release to pin; delete \"sshProxy\" from " +
		"\"advanced.server\"",
	"setup.network": "setup.network.onExists was never read: atelier network setup never prompts; " +
		"it is idempotent and keeps running sandboxes attached (atelier network teardown, then " +
		"setup, rebuilds the bridge); delete \"network\" from \"setup\"",
}

// retiredEnv are the environment variables of retired keys; setting one is
// refused the same way.
var retiredEnv = map[string]string{
	"ATELIER_IMAGES_DIR":        "sandbox.imagesDirectory",
	"ATELIER_TERMINAL_PORT":     "advanced.vm.terminal",
	"ATELIER_VERSION_SSH_PROXY": "advanced.server.sshProxy",
}
