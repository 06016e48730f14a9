package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"
)

// The values of -o/--output.
const (
	outText = "text"
	outJSON = "json"
	outYAML = "yaml"
)

// outputFormats are the values -o accepts, in the order help and completion show them.
var outputFormats = []string{outText, outJSON, outYAML}

// output is the -o/--output flag of a command that prints. It is a pflag.Value, so an unknown value is
// refused while the flags are parsed (a usage error, exit 2) and never falls back to text.
type output struct{ format string }

// String is the current format.
func (o *output) String() string { return o.format }

// Type names the value in help ("-o, --output format").
func (o *output) Type() string { return "format" }

// Set validates v. "table" is kept as a synonym of text: `devices query -o table` was its documented form.
func (o *output) Set(v string) error {
	v = strings.ToLower(strings.TrimSpace(v))
	if v == "table" {
		v = outText
	}
	for _, f := range outputFormats {
		if v == f {
			o.format = v
			return nil
		}
	}
	return fmt.Errorf("want one of %s", strings.Join(outputFormats, "|"))
}

// structured reports whether the command prints JSON or YAML, i.e. a document for a program: progress and
// hints then go to stderr only and stdout holds the document alone.
func (o *output) structured() bool { return o.format != outText }

// addOutputFlag registers -o/--output on cmd, with the completion of its values.
func addOutputFlag(cmd *cobra.Command) *output {
	o := &output{format: outText}
	cmd.Flags().VarP(o, "output", "o", "output format: "+strings.Join(outputFormats, "|"))
	_ = cmd.RegisterFlagCompletionFunc("output", cobra.FixedCompletions(outputFormats, cobra.ShellCompDirectiveNoFileComp))
	return o
}

// print writes v to w as JSON or YAML, or calls text for the human form. YAML is made from the JSON
// encoding so that the field names (the json tags) are the same in both formats.
func (o *output) print(w io.Writer, v any, text func() error) error {
	switch o.format {
	case outJSON:
		b, err := json.MarshalIndent(v, "", "  ")
		if err != nil {
			return fmt.Errorf("encode json: %w", err)
		}
		_, err = w.Write(append(b, '\n'))
		return err
	case outYAML:
		b, err := json.Marshal(v)
		if err != nil {
			return fmt.Errorf("encode yaml: %w", err)
		}
		y, err := yaml.JSONToYAML(b)
		if err != nil {
			return fmt.Errorf("encode yaml: %w", err)
		}
		_, err = w.Write(y)
		return err
	}
	if text == nil {
		return nil
	}
	return text()
}

// stdout is where a command's document goes: the command's out writer (tests set it), else os.Stdout.
func stdout(cmd *cobra.Command) io.Writer {
	if cmd == nil {
		return os.Stdout
	}
	return cmd.OutOrStdout()
}
