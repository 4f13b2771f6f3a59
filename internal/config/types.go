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
	TLS       TLS    `json:"tls"`
	SSH       SSH    `json:"ssh"`
}

type TLS struct {
	Email    string `json:"email"`
	CertPath string `json:"certPath"`
	KeyPath  string `json:"keyPath"`
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
}

type GitHub struct {
	ClientID     string `json:"clientId"`
	ClientSecret string `json:"clientSecret"`
	// WebURL and APIURL point at GitHub Enterprise, or at a local stand-in in tests.
	WebURL string `json:"webUrl"`
	APIURL string `json:"apiUrl"`
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
}

type Network struct {
	BridgeName   string   `json:"bridgeName"`
	BridgeIP     string   `json:"bridgeIp"`
	BridgePrefix int      `json:"bridgePrefix"`
	GuestIPStart int      `json:"guestIpStart"`
	DNSServers   []string `json:"dnsServers"`
	// The three below are always derived from BridgeIP and BridgePrefix; a
	// config file may state them only with the derived value.
	GuestSubnet   string `json:"guestSubnet"`
	BridgeCIDR    string `json:"bridgeCidr"`
	BridgeNetmask string `json:"bridgeNetmask"`
}

type Sandbox struct {
	Runtime         string `json:"runtime"`
	DefaultImage    string `json:"defaultImage"`
	ImagesDirectory string `json:"imagesDirectory"`
	StateDir        string `json:"stateDir"`
	LogDir          string `json:"logDir"`
	DefaultVcpus    int    `json:"defaultVcpus"`
	DefaultMemoryMB int    `json:"defaultMemoryMb"`
	Git             Git    `json:"git"`
}

type Git struct {
	Email string `json:"email"`
	Name  string `json:"name"`
}

type Setup struct {
	Storage      SetupStorage `json:"storage"`
	NetworkSetup SetupNetwork `json:"network"`
}

type SetupStorage struct {
	Method     string `json:"method"`
	LoopSizeGB int    `json:"loopSizeGb"`
	Device     string `json:"device"`
}

type SetupNetwork struct {
	OnExists string `json:"onExists"`
}

type Advanced struct {
	VM     AdvancedVM     `json:"vm"`
	Server AdvancedServer `json:"server"`
}

type AdvancedVM struct {
	VSCode   VersionedPort `json:"vscode"`
	OpenCode VersionedPort `json:"opencode"`
	Browser  Port          `json:"browser"`
	Terminal Port          `json:"terminal"`
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
	Verdaccio   VersionedPort `json:"verdaccio"`
	SSHProxy    Version       `json:"sshProxy"`
	Firecracker Firecracker   `json:"firecracker"`
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
