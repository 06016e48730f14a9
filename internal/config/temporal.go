package config

import (
	"fmt"
	"os"

	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/contrib/envconfig"
)

// Temporal connection settings are read by the SDK's envconfig package, the same code and the same places the
// temporal CLI reads: the profile named by TEMPORAL_PROFILE ("default" when unset) of the TOML file named by
// TEMPORAL_CONFIG_FILE (default: <user config dir>/temporalio/temporal.toml), then the TEMPORAL_* variables
// over it (TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, TEMPORAL_API_KEY, TEMPORAL_TLS, TEMPORAL_TLS_CLIENT_CERT_PATH,
// TEMPORAL_TLS_CLIENT_KEY_PATH, TEMPORAL_TLS_SERVER_CA_CERT_PATH, TEMPORAL_TLS_SERVER_NAME, ...). So an
// operator who can reach a cluster with `temporal workflow list` reaches it with fleetflow too: TLS, mTLS, API
// keys (Temporal Cloud) included.

// TemporalClientOptions returns the options to dial Temporal with: everything the temporal.toml profile and the
// TEMPORAL_* variables set, with address and namespace, when not empty, over theirs (command-line flags), and
// fleetflow's local defaults (DefaultTemporalAddress, DefaultNamespace) for what nothing sets. The caller adds
// its logger and metrics handler.
func TemporalClientOptions(address, namespace string) (client.Options, error) {
	opts, err := envconfig.LoadClientOptions(envconfig.LoadClientOptionsRequest{})
	if err != nil {
		return client.Options{}, fmt.Errorf("temporal client settings (%s): %w", temporalSources(), err)
	}
	opts.HostPort = firstNonEmpty(address, opts.HostPort, DefaultTemporalAddress)
	opts.Namespace = firstNonEmpty(namespace, opts.Namespace, DefaultNamespace)
	return opts, nil
}

// temporalAddress returns the address and namespace the profile and variables set, falling back to the
// defaults, and the profile's name when the file has that profile. A broken file or a missing profile falls
// back too: TemporalClientOptions reports the error when a command dials.
func temporalAddress() (address, namespace, profile string) {
	prof, err := envconfig.LoadClientConfigProfile(envconfig.LoadClientConfigProfileOptions{})
	if err != nil {
		return Env("TEMPORAL_ADDRESS", DefaultTemporalAddress), Env("TEMPORAL_NAMESPACE", DefaultNamespace), ""
	}
	if cfg, err := envconfig.LoadClientConfig(envconfig.LoadClientConfigOptions{}); err == nil {
		name := firstNonEmpty(os.Getenv("TEMPORAL_PROFILE"), envconfig.DefaultConfigFileProfile)
		if _, ok := cfg.Profiles[name]; ok {
			profile = name
		}
	}
	return firstNonEmpty(prof.Address, DefaultTemporalAddress), firstNonEmpty(prof.Namespace, DefaultNamespace), profile
}

// temporalSources names where the settings came from, for error messages.
func temporalSources() string {
	file := firstNonEmpty(os.Getenv("TEMPORAL_CONFIG_FILE"), envconfig.DefaultConfigFilePath())
	return fmt.Sprintf("profile %q of %s and TEMPORAL_* variables",
		firstNonEmpty(os.Getenv("TEMPORAL_PROFILE"), envconfig.DefaultConfigFileProfile), file)
}

func firstNonEmpty(vals ...string) string {
	for _, v := range vals {
		if v != "" {
			return v
		}
	}
	return ""
}
