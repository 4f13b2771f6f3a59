// Package config loads Atelier's unified configuration: defaults, then the
// JSON config file, then ATELIER_* environment variables (highest priority).
//
// The JSON key structure is the contract with operators (see the seed and
// sandbox.config.full-example.json); every key has one field here.
package config

// Mode is the runtime mode. It has no default: an unset mode refuses to start.
type Mode string

const (
	ModeProduction Mode = "production"
	ModeMock       Mode = "mock"
)

// Config is the effective configuration after all layers and derivations.
type Config struct {
	Domain   Domain   `json:"domain"`
	Auth     Auth     `json:"auth"`
	Server   Server   `json:"server"`
	Quotas   Quotas   `json:"quotas"`
	Network  Network  `json:"network"`
	Sandbox  Sandbox  `json:"sandbox"`
	Setup    Setup    `json:"setup"`
	Advanced Advanced `json:"advanced"`
}

type Domain struct {
	BaseDomain string `json:"baseDomain"`
	// Dashboard is derived as sandbox.{baseDomain} when empty.
	Dashboard string `json:"dashboard"`
	HTTPPort  int    `json:"httpPort"`
	HTTPSPort int    `json:"httpsPort"`
	// MaxDevHostsPerSandbox and MaxDevHostsPerUser cap exposed dev hosts:
	// each is a route and, with ACME, a certificate.
	MaxDevHostsPerSandbox int `json:"maxDevHostsPerSandbox"`
	MaxDevHostsPerUser    int `json:"maxDevHostsPerUser"`
	TLS                   TLS `json:"tls"`
	SSH                   SSH `json:"ssh"`
}

type TLS struct {
	Email    string `json:"email"`
	CertPath string `json:"certPath"`
	KeyPath  string `json:"keyPath"`
	// MaxNewCertsPerHour bounds on-demand ACME issuance host-wide; 0 is no
	// limit (a private CA).
	MaxNewCertsPerHour int `json:"maxNewCertsPerHour"`
}

type SSH struct {
	Port int `json:"port"`
	// Hostname is derived as ssh.{baseDomain} when empty.
	Hostname string `json:"hostname"`
}

type Auth struct {
	GitHub       GitHub   `json:"github"`
	JWTSecret    string   `json:"jwtSecret"`
	AllowedOrg   string   `json:"allowedOrg"`
	AllowedUsers []string `json:"allowedUsers"`
	// SessionTTLHours bounds the dashboard session cookie and its server-side row.
	SessionTTLHours int `json:"sessionTtlHours"`
	// Admins are the GitHub logins allowed host-wide operations (the npm
	// cache, cleanup, every user's sandboxes); each must also be allowed in.
	Admins []string `json:"admins"`
	// TokenTTLDays is the lifetime of a new API token: the default and the
	// longest a create may ask for.
	TokenTTLDays int `json:"tokenTtlDays"`
	// TokenNoExpiry is "allow" when a create may ask for a token that never
	// expires, "refuse" otherwise.
	TokenNoExpiry string `json:"tokenNoExpiry"`
	// OrgRecheckMinutes is how long a confirmed allowedOrg membership is
	// trusted before GitHub is asked again.
	OrgRecheckMinutes int `json:"orgRecheckMinutes"`
}

// Token expiry policies of auth.tokenNoExpiry.
const (
	TokenNoExpiryRefuse = "refuse"
	TokenNoExpiryAllow  = "allow"
)

type GitHub struct {
	ClientID     string `json:"clientId"`
	ClientSecret string `json:"clientSecret"`
	// WebURL and APIURL point at GitHub Enterprise, or at a local stand-in in tests.
	WebURL string `json:"webUrl"`
	APIURL string `json:"apiUrl"`
	// AppID and AppPrivateKeyPath are a GitHub App whose installation
	// tokens git sources may use (both or neither).
	AppID             int    `json:"appId"`
	AppPrivateKeyPath string `json:"appPrivateKeyPath"`
}

type Server struct {
	Mode         Mode   `json:"mode"`
	Host         string `json:"host"`
	Port         int    `json:"port"`
	MaxSandboxes int    `json:"maxSandboxes"`
	// SpawnConcurrency bounds how many creates run their boot steps at once.
	SpawnConcurrency int    `json:"spawnConcurrency"`
	DataDir          string `json:"dataDir"`
	// SocketPath is the root-only unix socket the server CLI uses without a token;
	// derived as {dataDir}/atelier.sock when empty.
	SocketPath string `json:"socketPath"`
	LogLevel   string `json:"logLevel"`
	// LogFormat is text (for a terminal) or json (one object per line, for
	// the journal and log shippers); `serve --log-format` overrides it.
	LogFormat string `json:"logFormat"`
	// AllowRemoteMock lets a mock-mode manager listen beyond loopback. Mock
	// mode has no login and runs guests as the developer's own processes, so
	// without it mock mode binds 127.0.0.1 and refuses other addresses.
	AllowRemoteMock bool `json:"allowRemoteMock"`
}

// Quotas bound what one user (owner id) may hold, so that one user cannot
// starve the others of a shared host. 0 means unlimited; the defaults are
// not 0, so unlimited is always the operator's explicit choice.
type Quotas struct {
	// RunningPerUser bounds a user's sandboxes that are creating, starting,
	// running or stopping: the ones counted by server.maxSandboxes.
	RunningPerUser int `json:"runningPerUser"`
	// SandboxesPerUser bounds a user's sandboxes in any state: a stopped
	// one still holds its disk and its IP address.
	SandboxesPerUser int `json:"sandboxesPerUser"`
	// DiskGBPerUser bounds, in GiB, the sum of the virtual sizes of a
	// user's sandbox disks (each is its image's size).
	DiskGBPerUser int `json:"diskGbPerUser"`
}

type Network struct {
	BridgeName   string   `json:"bridgeName"`
	BridgeIP     string   `json:"bridgeIp"`
	BridgePrefix int      `json:"bridgePrefix"`
	GuestIPStart int      `json:"guestIpStart"`
	DNSServers   []string `json:"dnsServers"`
	// EgressAllowCIDRs are private or otherwise blocked IPv4 prefixes that
	// guests may nevertheless reach through the egress interface.
	EgressAllowCIDRs []string `json:"egressAllowCidrs"`
	// The three below are always derived from BridgeIP and BridgePrefix; a
	// config file may state them only with the derived value.
	GuestSubnet   string `json:"guestSubnet"`
	BridgeCIDR    string `json:"bridgeCidr"`
	BridgeNetmask string `json:"bridgeNetmask"`
}

type Sandbox struct {
	Runtime      string `json:"runtime"`
	DefaultImage string `json:"defaultImage"`
	StateDir     string `json:"stateDir"`
	LogDir       string `json:"logDir"`
	// LogMaxBytes is the most one sandbox log file holds before it is
	// rotated; LogKeep how many rotated files are kept beside it. A guest
	// flooding its console holds at most LogMaxBytes × (LogKeep+1).
	LogMaxBytes     int `json:"logMaxBytes"`
	LogKeep         int `json:"logKeep"`
	DefaultVcpus    int `json:"defaultVcpus"`
	DefaultMemoryMB int `json:"defaultMemoryMb"`
	Git             Git `json:"git"`
	// Container configures the container runtime (sandbox.runtime container).
	Container SandboxContainer `json:"container"`
	// Pool keeps booted sandboxes of the default shape for creates to claim.
	Pool SandboxPool `json:"pool"`
	// Kubernetes configures the kubernetes runtime (sandbox.runtime kubernetes).
	Kubernetes SandboxKubernetes `json:"kubernetes"`
}

// SandboxPool is the warm pool: Size booted, unclaimed sandboxes of
// sandbox.defaultImage, defaultVcpus and defaultMemoryMb, kept by the
// leader. Each costs what an idle sandbox of that image costs (a dev-base
// one idles at about 1.2 GB with code-server and OpenCode), so it is off
// by default.
type SandboxPool struct {
	Size int `json:"size"`
}

// SandboxKubernetes is the cluster sandboxes run in as Pods.
type SandboxKubernetes struct {
	// Kubeconfig is a kubeconfig file; empty: the in-cluster service account.
	Kubeconfig string `json:"kubeconfig"`
	// Namespace holds the sandboxes' Pods, disks, Secrets and policies
	// (and, deployed as the manifests do, the manager itself).
	Namespace string `json:"namespace"`
	// RuntimeClassName of sandbox Pods (kata-fc for VM isolation); empty:
	// the node's default (runc).
	RuntimeClassName string `json:"runtimeClassName"`
	// StorageClass of sandbox disks; empty: the cluster's default class.
	StorageClass string `json:"storageClass"`
	// DiskGB is the size of every sandbox disk.
	DiskGB int `json:"diskGb"`
	// Images maps Atelier images to OCI references, IMAGE=REFERENCE.
	Images []string `json:"images"`
	// Snapshots names a CSI VolumeSnapshot of an image's root, IMAGE=NAME.
	Snapshots []string `json:"snapshots"`
	// SnapshotClass is the VolumeSnapshotClass of prebuild snapshots;
	// empty: the cluster's default class.
	SnapshotClass string `json:"snapshotClass"`
	// ClusterCIDRs are the cluster's pod, Service and node ranges, denied
	// to sandboxes on top of every non-public range.
	ClusterCIDRs []string `json:"clusterCidrs"`
	// CADir holds the agent CA (ca.crt, ca.key); empty: {dataDir}/agent-ca.
	CADir string `json:"caDir"`
	// AllowUnenforcedPolicies lets sandboxes run on a cluster whose network
	// was found to ignore NetworkPolicies (then nothing keeps one
	// sandbox's Pod from another's code-server).
	AllowUnenforcedPolicies bool `json:"allowUnenforcedPolicies"`
}

type SandboxContainer struct {
	// UserNamespace is auto (where the host supports it), on (required) or
	// off (guest root is host root).
	UserNamespace string `json:"userNamespace"`
}

type Git struct {
	Email string `json:"email"`
	Name  string `json:"name"`
}

type Setup struct {
	Storage SetupStorage `json:"storage"`
}

type SetupStorage struct {
	Method     string `json:"method"`
	LoopSizeGB int    `json:"loopSizeGb"`
	Device     string `json:"device"`
}

type Advanced struct {
	VM     AdvancedVM     `json:"vm"`
	Server AdvancedServer `json:"server"`
}

type AdvancedVM struct {
	VSCode   VersionedPort `json:"vscode"`
	OpenCode VersionedPort `json:"opencode"`
	Browser  Port          `json:"browser"`
	Agent    Port          `json:"agent"`
}

type Port struct {
	Port int `json:"port"`
}

type VersionedPort struct {
	Port    int    `json:"port"`
	Version string `json:"version"`
}

type AdvancedServer struct {
	// ReleaseURL is where `atelier update --version V` downloads
	// {ReleaseURL}/v{V}/atelier-linux-{arch} and its .sha256; empty: only
	// --binary updates.
	ReleaseURL  string      `json:"releaseUrl"`
	Verdaccio   Verdaccio   `json:"verdaccio"`
	Firecracker Firecracker `json:"firecracker"`
	Database    Database    `json:"database"`
	// SecretsKeyFile is the key that seals secrets at rest (secretbox);
	// empty: {dataDir}/secrets.key, created at the first start. Replicas
	// sharing a store must all read the same key: point this at one file
	// every replica mounts (a Kubernetes Secret volume, say), which must
	// exist already.
	SecretsKeyFile string `json:"secretsKeyFile"`
}

// Database is the manager's store. Empty URL: the embedded SQLite file
// {dataDir}/atelier.db, for one manager. A PostgreSQL URL lets several
// managers (replicas) share one store; it may carry a password, so it is a
// secret: redacted in `config show` and never logged.
type Database struct {
	URL string `json:"url"`
}

// Verdaccio is the shared npm cache the manager runs on the bridge.
type Verdaccio struct {
	Port    int    `json:"port"`
	Version string `json:"version"`
	// User is the unprivileged system account Verdaccio runs as when the
	// manager is root; created (no login, no home) when missing.
	User string `json:"user"`
	// Dir holds Verdaccio's install, config and package storage, outside
	// the manager's private data dir; derived as {dataDir}-registry when
	// empty.
	Dir string `json:"dir"`
}

type Version struct {
	Version string `json:"version"`
}

type Firecracker struct {
	Version    string `json:"version"`
	BinaryPath string `json:"binaryPath"`
	// JailerPath starts every Firecracker through the jailer (chroot, own
	// uid/gid, cgroup limits); empty runs Firecracker directly as root.
	JailerPath string `json:"jailerPath"`
	KernelPath string `json:"kernelPath"`
	// ChrootBaseDir is the jailer's --chroot-base-dir; derived as
	// {stateDir}/jailer when empty. It must be on the filesystem of
	// {stateDir}/sockets.
	ChrootBaseDir string `json:"chrootBaseDir"`
	// JailerUIDBase: each sandbox's Firecracker runs as uid and gid
	// JailerUIDBase + the host part of the sandbox's IP address.
	JailerUIDBase int `json:"jailerUidBase"`
}
