package config

// retiredKeys are keys earlier versions accepted and never acted on. A file
// that still sets one is refused with why, rather than "unknown key", and
// rather than being read and ignored, which would tell the operator the
// setting works.
var retiredKeys = map[string]string{
	"sandbox.imagesDirectory": "was never read: sandboxes are cloned from " +
		"{sandbox.stateDir}/images/<image>.ext4 (or the LVM volume image-<image>); delete the key",
	"setup.network": "setup.network.onExists was never read: atelier network setup never prompts; " +
		"it is idempotent and keeps running sandboxes attached (atelier network teardown, then " +
		"setup, rebuilds the bridge); delete \"network\" from \"setup\"",
}

// retiredEnv are the environment variables of retired keys; setting one is
// refused the same way.
var retiredEnv = map[string]string{
	"ATELIER_IMAGES_DIR": "sandbox.imagesDirectory",
}
