package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/fleetflow/fleetflow/internal/numfmt"
	"github.com/fleetflow/fleetflow/internal/pki"
)

// deviceCAEnv names the fleet CA's directory, for `ca` and `provision --auth x509` (the gateway is given the
// CA's certificate file itself, FLEETFLOW_DEVICE_CA).
const deviceCAEnv = "FLEETFLOW_DEVICE_CA_DIR"

// addCADirFlag registers --ca-dir on cmd.
func addCADirFlag(cmd *cobra.Command, dir *string) {
	cmd.Flags().StringVar(dir, "ca-dir", os.Getenv(deviceCAEnv),
		"directory of the fleet CA (ca.pem, ca-key.pem) ("+deviceCAEnv+"; default: .fleetflow/ca in the checkout)")
}

// deviceCADir is the fleet CA's directory: --ca-dir (FLEETFLOW_DEVICE_CA_DIR), else .fleetflow/ca of the
// checkout, beside the local stack's other state (docs/architecture.md, "Device certificates").
func deviceCADir(flag string) (string, error) {
	if flag != "" {
		// Absolute, so that what init prints for the gateway's --device-ca works from any directory.
		abs, err := filepath.Abs(flag)
		if err != nil {
			return "", fmt.Errorf("CA directory %s: %w", flag, err)
		}
		return abs, nil
	}
	root, err := repoRoot()
	if err != nil {
		return "", usagef("no fleet CA directory: pass --ca-dir or set %s (%v)", deviceCAEnv, err)
	}
	return filepath.Join(root, ".fleetflow", "ca"), nil
}

// caInfo is what `ca init` and `ca show` print.
type caInfo struct {
	Certificate string    `json:"certificate"` // the file the gateway's --device-ca takes
	Key         string    `json:"key"`
	Subject     string    `json:"subject"`
	SHA256      string    `json:"fingerprintSha256"`
	NotBefore   time.Time `json:"notBefore"`
	NotAfter    time.Time `json:"notAfter"`
	Created     bool      `json:"created"` // by this command (init)
}

func newCACmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "ca",
		Short: "Create or show the fleet CA that signs devices' client certificates",
		Long: `The fleet CA signs the client certificates of devices provisioned with ` + "`provision --auth x509`" + `. A device
presenting such a certificate over TLS, whose subject is its id and whose fingerprint the registry holds,
connects without a secret. The CA lives in a directory of its own (--ca-dir, ` + deviceCAEnv + `, by
default .fleetflow/ca of the checkout): ca.pem, which the gateway trusts (--device-ca, FLEETFLOW_DEVICE_CA;
` + "`dev up`" + ` passes it to its gateway when the file exists), and ca-key.pem (mode 0600), which only the
provisioning CLI reads. Keep the key as you would the keys of every device it signs.`,
		Example: `  fleetflow ca init
  fleetflow ca show -o json
  fleetflow ca init --ca-dir /etc/fleetflow/device-ca --name "ACME fleet CA"`,
		Args: cobra.NoArgs,
	}
	cmd.AddCommand(newCAInitCmd(g), newCAShowCmd(g))
	return cmd
}

func newCAInitCmd(_ *globals) *cobra.Command {
	var dir, name, validity string
	var out *output
	cmd := &cobra.Command{
		Use:   "init",
		Short: "Create the fleet CA (refuses to replace an existing one)",
		Long: `init creates the fleet CA: a new ECDSA P-256 key (ca-key.pem, mode 0600) and a self-signed CA certificate
(ca.pem) in the CA directory. It refuses when the directory already holds a CA: replacing it would leave
every device certificate it signed unverifiable. A gateway trusts the CA once given ca.pem (--device-ca); one
started before the CA existed, e.g. by an earlier ` + "`dev up`" + `, needs a restart (` + "`dev down && dev up`" + `).`,
		Example: `  fleetflow ca init
  fleetflow ca init --ca-dir /etc/fleetflow/device-ca --validity 7300d`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			d, err := deviceCADir(dir)
			if err != nil {
				return err
			}
			life := pki.DeviceCAValidity
			if validity != "" {
				if life, err = numfmt.ParseDuration("--validity", validity); err != nil {
					return usagef("%w", err)
				}
			}
			ca, err := pki.InitDeviceCA(d, name, time.Now(), life)
			if errors.Is(err, pki.ErrCAExists) {
				return fmt.Errorf("%s already holds a fleet CA; it is never replaced, because the certificates of your devices chain to it "+
					"(see it with `fleetflow ca show --ca-dir %s`; a new CA needs a new directory and re-provisioned devices)", d, d)
			}
			if err != nil {
				return err
			}
			files := pki.DeviceCAIn(d)
			info := caInfoOf(ca, files)
			info.Created = true
			return out.print(cmd.OutOrStdout(), info, func() error {
				w := cmd.OutOrStdout()
				fmt.Fprintf(w, "created the fleet CA in %s\n", d)
				if err := printCAInfo(w, info); err != nil {
					return err
				}
				fmt.Fprintf(w, "\nthe gateway trusts it with --device-ca %s (FLEETFLOW_DEVICE_CA; `fleetflow dev up` passes it when run\n"+
					"again); provision devices with `fleetflow provision --auth x509`\n", files.Cert)
				return nil
			})
		},
	}
	addCADirFlag(cmd, &dir)
	cmd.Flags().StringVar(&name, "name", "", `the CA's common name (default "fleetflow device CA (<host>)")`)
	cmd.Flags().StringVar(&validity, "validity", "", "how long the CA is valid (default 7300d); device certificates cannot outlive it")
	out = addOutputFlag(cmd)
	return cmd
}

func newCAShowCmd(_ *globals) *cobra.Command {
	var dir string
	var out *output
	cmd := &cobra.Command{
		Use:   "show",
		Short: "Print the fleet CA's subject, fingerprint and validity",
		Long: `show prints the fleet CA's certificate file, subject, SHA-256 fingerprint (as ` + "`openssl x509 -fingerprint -sha256`" + `
prints it) and validity, after checking that its key belongs to it.`,
		Example: `  fleetflow ca show
  fleetflow ca show --ca-dir /etc/fleetflow/device-ca -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			d, err := deviceCADir(dir)
			if err != nil {
				return err
			}
			files := pki.DeviceCAIn(d)
			if !files.Exists() {
				return fmt.Errorf("no fleet CA in %s; create one with `fleetflow ca init`", d)
			}
			ca, err := pki.LoadCA(files.Cert, files.Key)
			if err != nil {
				return err
			}
			info := caInfoOf(ca, files)
			return out.print(cmd.OutOrStdout(), info, func() error { return printCAInfo(cmd.OutOrStdout(), info) })
		},
	}
	addCADirFlag(cmd, &dir)
	out = addOutputFlag(cmd)
	return cmd
}

func caInfoOf(ca *pki.CA, files pki.DeviceCA) caInfo {
	return caInfo{Certificate: files.Cert, Key: files.Key, Subject: ca.Cert.Subject.String(),
		SHA256: pki.FormatFingerprint(pki.Fingerprint(ca.Cert)), NotBefore: ca.Cert.NotBefore.UTC(),
		NotAfter: ca.Cert.NotAfter.UTC()}
}

func printCAInfo(w io.Writer, info caInfo) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	left := time.Until(info.NotAfter)
	fmt.Fprintf(tw, "certificate\t%s\nkey\t%s (mode 0600)\nsubject\t%s\nSHA-256\t%s\n", info.Certificate, info.Key, info.Subject, info.SHA256)
	fmt.Fprintf(tw, "valid\t%s to %s (%s days left)\n", info.NotBefore.Format(time.RFC3339), info.NotAfter.Format(time.RFC3339),
		numfmt.Thousands(int64(left/(24*time.Hour))))
	return tw.Flush()
}
