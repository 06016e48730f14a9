package validate

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"helm.sh/helm/v4/pkg/action"
	"helm.sh/helm/v4/pkg/chart/common"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	release "helm.sh/helm/v4/pkg/release/v1"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer/json"
	"sigs.k8s.io/yaml"
)

const chartDir = "deploy/helm/fleetflow"

// serviceMonitor mirrors the fields of the Prometheus Operator's ServiceMonitor that the chart sets: its types
// are not part of k8s.io/api, and importing the operator for one kind is not worth it. Decoded strictly too.
type serviceMonitor struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		Selector  metav1.LabelSelector `json:"selector"`
		Endpoints []struct {
			Port     string `json:"port"`
			Path     string `json:"path"`
			Interval string `json:"interval"`
		} `json:"endpoints"`
	} `json:"spec"`
}

// rendered is what `helm template` produced, decoded.
type rendered struct {
	deployments map[string]*appsv1.Deployment // by component label
	services    []*corev1.Service
	hpas        []*autoscalingv2.HorizontalPodAutoscaler
	pdbs        []*policyv1.PodDisruptionBudget
	jobs        map[string]*batchv1.Job // by component label
	policies    []*networkingv1.NetworkPolicy
	monitors    []*serviceMonitor
	kinds       []string // every document's kind, in order
}

// renderChart renders the chart as `helm template fleetflow deploy/helm/fleetflow -n fleetflow -f valuesFile`
// does, in process, hooks included, and decodes every document strictly into the Kubernetes API types: an
// unknown or misspelt field, a duplicate field or a value of the wrong type fails.
func renderChart(t *testing.T, valuesFile string) rendered {
	t.Helper()
	ch, err := loader.Load(filepath.Join(repoRoot(t), chartDir))
	if err != nil {
		t.Fatalf("load chart: %v", err)
	}
	vals := map[string]any{}
	if valuesFile != "" {
		b, err := os.ReadFile(valuesFile)
		if err != nil {
			t.Fatal(err)
		}
		if err := yaml.Unmarshal(b, &vals); err != nil {
			t.Fatalf("%s: %v", valuesFile, err)
		}
	}
	rel, err := newInstall(t).Run(ch, vals)
	if err != nil {
		t.Fatalf("helm template: %v", err)
	}
	r, ok := rel.(*release.Release)
	if !ok {
		t.Fatalf("release of type %T", rel)
	}
	docs := []string{r.Manifest}
	for _, h := range r.Hooks {
		docs = append(docs, h.Manifest)
	}
	return decodeAll(t, strings.Join(docs, "\n---\n"))
}

// kubeVersion is the cluster version templates see (helm template --kube-version): Helm's own default is older
// than the chart's kubeVersion.
const kubeVersion = "v1.33.0"

// newInstall is `helm template fleetflow -n fleetflow --kube-version kubeVersion`: a client-side dry run.
func newInstall(t *testing.T) *action.Install {
	t.Helper()
	kv, err := common.ParseKubeVersion(kubeVersion)
	if err != nil {
		t.Fatal(err)
	}
	inst := action.NewInstall(action.NewConfiguration())
	inst.DryRunStrategy = action.DryRunClient
	inst.ReleaseName = "fleetflow"
	inst.Namespace = "fleetflow"
	inst.Replace = true // no release name check
	inst.KubeVersion = kv
	return inst
}

var docSeparator = regexp.MustCompile(`(?m)^---\s*$`)

func decodeAll(t *testing.T, manifest string) rendered {
	t.Helper()
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{appsv1.AddToScheme, corev1.AddToScheme, batchv1.AddToScheme,
		policyv1.AddToScheme, autoscalingv2.AddToScheme, networkingv1.AddToScheme} {
		if err := add(scheme); err != nil {
			t.Fatal(err)
		}
	}
	strict := json.NewSerializerWithOptions(json.DefaultMetaFactory, scheme, scheme,
		json.SerializerOptions{Yaml: true, Strict: true})
	out := rendered{deployments: map[string]*appsv1.Deployment{}, jobs: map[string]*batchv1.Job{}}
	for _, doc := range docSeparator.Split(manifest, -1) {
		if strings.TrimSpace(regexp.MustCompile(`(?m)^#.*$`).ReplaceAllString(doc, "")) == "" {
			continue
		}
		var meta metav1.TypeMeta
		if err := yaml.Unmarshal([]byte(doc), &meta); err != nil {
			t.Fatalf("document is not YAML: %v\n%s", err, doc)
		}
		out.kinds = append(out.kinds, meta.Kind)
		if meta.APIVersion == "monitoring.coreos.com/v1" && meta.Kind == "ServiceMonitor" {
			var sm serviceMonitor
			if err := yaml.UnmarshalStrict([]byte(doc), &sm); err != nil {
				t.Fatalf("ServiceMonitor: %v\n%s", err, doc)
			}
			out.monitors = append(out.monitors, &sm)
			continue
		}
		gvk := schema.FromAPIVersionAndKind(meta.APIVersion, meta.Kind)
		if !scheme.Recognizes(gvk) {
			t.Fatalf("unexpected kind %s: add its type to the test or remove it from the chart\n%s", gvk, doc)
		}
		obj, _, err := strict.Decode([]byte(doc), &gvk, nil)
		if err != nil {
			t.Fatalf("%s does not decode strictly: %v\n%s", gvk.Kind, err, doc)
		}
		switch o := obj.(type) {
		case *appsv1.Deployment:
			out.deployments[o.Labels["app.kubernetes.io/component"]] = o
		case *corev1.Service:
			out.services = append(out.services, o)
		case *autoscalingv2.HorizontalPodAutoscaler:
			out.hpas = append(out.hpas, o)
		case *policyv1.PodDisruptionBudget:
			out.pdbs = append(out.pdbs, o)
		case *batchv1.Job:
			out.jobs[o.Labels["app.kubernetes.io/component"]] = o
		case *networkingv1.NetworkPolicy:
			out.policies = append(out.policies, o)
		default:
			t.Fatalf("decoded %T: not checked by this test", obj)
		}
	}
	return out
}

func productionValues(t *testing.T) string {
	return filepath.Join(repoRoot(t), chartDir, "ci", "production-values.yaml")
}

func TestHelmStrictDecodeFailsOnUnknownField(t *testing.T) {
	// The decoder this test relies on must refuse what Kubernetes would: a misspelt field.
	scheme := runtime.NewScheme()
	if err := appsv1.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	strict := json.NewSerializerWithOptions(json.DefaultMetaFactory, scheme, scheme, json.SerializerOptions{Yaml: true, Strict: true})
	doc := "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec:\n  replica: 2\n"
	if _, _, err := strict.Decode([]byte(doc), nil, nil); err == nil || !strings.Contains(err.Error(), "replica") {
		t.Errorf("strict decode of a misspelt field: err = %v", err)
	}
}

// values.schema.json refuses a misspelt value instead of rendering the default silently.
func TestHelmValuesSchema(t *testing.T) {
	ch, err := loader.Load(filepath.Join(repoRoot(t), chartDir))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		vals map[string]any
		want string
	}{
		{map[string]any{"gateway": map[string]any{"replica": 3}}, "replica"},
		{map[string]any{"worker": map[string]any{"stopTimeout": "1 minute"}}, "stopTimeout"},
		{map[string]any{"databse": map[string]any{}}, "databse"},
		{map[string]any{"gateway": map[string]any{"tlsSecret": ""}}, "tlsSecret"},
	} {
		if _, err := newInstall(t).Run(ch, tc.vals); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("values %v: err = %v, want a schema error naming %s", tc.vals, err, tc.want)
		}
	}
}

// Without the autoscaler the worker Deployment carries its replicas itself.
func TestHelmWorkerWithoutAutoscaler(t *testing.T) {
	f := filepath.Join(t.TempDir(), "values.yaml")
	if err := os.WriteFile(f, []byte("worker:\n  replicas: 4\n  autoscaling:\n    enabled: false\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r := renderChart(t, f)
	if len(r.hpas) != 0 {
		t.Errorf("%d HorizontalPodAutoscalers with autoscaling off", len(r.hpas))
	}
	if w := r.deployments["worker"]; w == nil || w.Spec.Replicas == nil || *w.Spec.Replicas != 4 {
		t.Errorf("worker replicas: %+v", w)
	}
}

func TestHelmChart(t *testing.T) {
	for _, tc := range []struct{ name, values string }{
		{"defaults", ""},
		{"production", productionValues(t)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := renderChart(t, tc.values)
			checkChart(t, r, tc.name == "production")
		})
	}
}

func checkChart(t *testing.T, r rendered, production bool) {
	gw, worker := r.deployments["gateway"], r.deployments["worker"]
	if gw == nil || worker == nil || len(r.deployments) != 2 {
		t.Fatalf("deployments %v: want gateway and worker", keys(r.deployments))
	}
	for _, kind := range r.kinds {
		if kind == "Secret" || kind == "ConfigMap" {
			t.Errorf("the chart renders a %s: credentials are referenced from Secrets the operator creates", kind)
		}
	}

	// Devices: a LoadBalancer on 8883 in front of the gateways' TLS listener.
	var lb *corev1.Service
	for _, s := range r.services {
		if s.Spec.Type == corev1.ServiceTypeLoadBalancer {
			if lb != nil {
				t.Errorf("two LoadBalancer Services: %s and %s", lb.Name, s.Name)
			}
			lb = s
		}
	}
	if lb == nil {
		t.Fatal("no LoadBalancer Service")
	}
	if len(lb.Spec.Ports) != 1 || lb.Spec.Ports[0].Port != 8883 || lb.Spec.Ports[0].Protocol != corev1.ProtocolTCP {
		t.Errorf("LoadBalancer ports %+v, want TCP 8883 only", lb.Spec.Ports)
	}
	gwc := container(t, gw, "gateway")
	if p := containerPort(gwc, lb.Spec.Ports[0].TargetPort.String()); p != 8883 {
		t.Errorf("LoadBalancer targets %s, the gateway's port %d", lb.Spec.Ports[0].TargetPort.String(), p)
	}
	// The devices' own addresses reach the gateways (their per-address limit of failed CONNECTs needs them).
	if lb.Spec.ExternalTrafficPolicy != corev1.ServiceExternalTrafficPolicyLocal {
		t.Errorf("LoadBalancer externalTrafficPolicy %q, want Local", lb.Spec.ExternalTrafficPolicy)
	}
	if envValue(gwc, "FLEETFLOW_GATEWAY_TLS_LISTEN") != "0.0.0.0:8883" {
		t.Errorf("gateway TLS listen %q", envValue(gwc, "FLEETFLOW_GATEWAY_TLS_LISTEN"))
	}
	for _, s := range r.services {
		if !selects(s.Spec.Selector, gw.Spec.Template.Labels) && !selects(s.Spec.Selector, worker.Spec.Template.Labels) {
			t.Errorf("Service %s selects no pod of the chart", s.Name)
		}
	}

	// Workers: the HPA scales the worker Deployment, which then leaves replicas to it.
	if len(r.hpas) != 1 {
		t.Fatalf("%d HorizontalPodAutoscalers, want 1", len(r.hpas))
	}
	ref := r.hpas[0].Spec.ScaleTargetRef
	if ref.Kind != "Deployment" || ref.APIVersion != "apps/v1" || ref.Name != worker.Name {
		t.Errorf("HPA targets %+v, want the worker Deployment %s", ref, worker.Name)
	}
	if worker.Spec.Replicas != nil {
		t.Errorf("worker Deployment sets replicas %d while the HPA scales it", *worker.Spec.Replicas)
	}
	if min := r.hpas[0].Spec.MinReplicas; min == nil || *min < 2 || r.hpas[0].Spec.MaxReplicas < *min {
		t.Errorf("HPA replicas %v..%d", min, r.hpas[0].Spec.MaxReplicas)
	}

	// Disruption budgets cover both Deployments.
	for _, d := range []*appsv1.Deployment{gw, worker} {
		covered := false
		for _, pdb := range r.pdbs {
			if selects(pdb.Spec.Selector, d.Spec.Template.Labels) {
				covered = true
			}
		}
		if !covered {
			t.Errorf("no PodDisruptionBudget covers %s", d.Name)
		}
	}

	// The migrate Job runs `fleetflow migrate` before install and upgrade, ahead of the Temporal setup.
	migrate := r.jobs["migrate"]
	if migrate == nil {
		t.Fatalf("no migrate Job (jobs: %v)", keys(r.jobs))
	}
	mc := container(t, migrate, "migrate")
	if !slices.Equal(mc.Args, []string{"migrate"}) || mc.Image != gwc.Image || gwc.Args[0] != "gateway" {
		t.Errorf("migrate runs %s %v, want the gateway's image %s with migrate", mc.Image, mc.Args, gwc.Image)
	}
	hookWeight := map[string]int{}
	for name, j := range r.jobs {
		if h := j.Annotations["helm.sh/hook"]; h != "pre-install,pre-upgrade" {
			t.Errorf("Job %s: helm.sh/hook %q, want pre-install,pre-upgrade", name, h)
		}
		w, err := strconv.Atoi(j.Annotations["helm.sh/hook-weight"])
		if err != nil {
			t.Errorf("Job %s: hook weight: %v", name, err)
		}
		hookWeight[name] = w
		if j.Spec.Template.Spec.RestartPolicy != corev1.RestartPolicyNever && j.Spec.Template.Spec.RestartPolicy != corev1.RestartPolicyOnFailure {
			t.Errorf("Job %s: restartPolicy %q", name, j.Spec.Template.Spec.RestartPolicy)
		}
	}
	if setup := r.jobs["temporal-setup"]; setup != nil {
		if hookWeight["temporal-setup"] <= hookWeight["migrate"] {
			t.Errorf("hook weights: migrate %d, temporal-setup %d: the schema first", hookWeight["migrate"], hookWeight["temporal-setup"])
		}
		sc := container(t, setup, "temporal-setup")
		if len(sc.Command) != 4 || sc.Command[2] != readFile(t, chartDir+"/files/temporal-setup.sh") {
			t.Errorf("temporal-setup does not run files/temporal-setup.sh: %q", sc.Command)
		}
	} else {
		t.Error("no temporal-setup Job")
	}

	// Every pod: non-root, read-only root file system, no privilege escalation, no service account token.
	pods := map[string]corev1.PodSpec{"gateway": gw.Spec.Template.Spec, "worker": worker.Spec.Template.Spec}
	for name, j := range r.jobs {
		pods[name] = j.Spec.Template.Spec
	}
	for name, pod := range pods {
		checkPodSecurity(t, name, pod)
		checkPodWiring(t, name, pod)
	}

	// Probes: the worker's readiness and liveness endpoints; the gateway's TLS listener and metrics server.
	wc := container(t, worker, "worker")
	checkProbe(t, "worker readiness", wc, wc.ReadinessProbe, "/readyz")
	checkProbe(t, "worker liveness", wc, wc.LivenessProbe, "/livez")
	checkProbe(t, "gateway readiness", gwc, gwc.ReadinessProbe, "")
	checkProbe(t, "gateway liveness", gwc, gwc.LivenessProbe, "/metrics")
	for _, c := range []*corev1.Container{gwc, wc} {
		if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() {
			t.Errorf("%s: resources %+v: want CPU and memory requests and a memory limit", c.Name, c.Resources)
		}
	}
	stop, err := time.ParseDuration(envValue(wc, "FLEETFLOW_WORKER_STOP_TIMEOUT"))
	if err != nil {
		t.Errorf("worker stop timeout: %v", err)
	} else if g := worker.Spec.Template.Spec.TerminationGracePeriodSeconds; g == nil || time.Duration(*g)*time.Second <= stop {
		t.Errorf("worker grace period %v, want more than the stop timeout %v", g, stop)
	}

	// Secrets are referenced, never inlined.
	for _, c := range []*corev1.Container{gwc, wc, mc} {
		for _, name := range []string{"FLEETFLOW_DATABASE_URL"} {
			if e := envVar(c, name); e == nil || e.Value != "" || e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil {
				t.Errorf("%s: %s is not read from a Secret: %+v", c.Name, name, e)
			}
		}
	}
	for _, c := range []*corev1.Container{gwc, wc} {
		if e := envVar(c, "FLEETFLOW_NATS_URL"); e == nil || e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil {
			t.Errorf("%s: FLEETFLOW_NATS_URL is not read from a Secret: %+v", c.Name, e)
		}
	}
	// The gateway's LISTEN connection has its own URL, which may be absent from the Secret.
	if e := envVar(gwc, "FLEETFLOW_DATABASE_LISTEN_URL"); e == nil || e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil ||
		e.ValueFrom.SecretKeyRef.Optional == nil || !*e.ValueFrom.SecretKeyRef.Optional {
		t.Errorf("gateway: FLEETFLOW_DATABASE_LISTEN_URL should come, optionally, from the database Secret: %+v", e)
	}
	credential := regexp.MustCompile(`(?i)password|://[^/@\s]+:[^/@\s]+@|api_key|secret`)
	for name, pod := range pods {
		for _, c := range pod.Containers {
			for _, e := range c.Env {
				if e.Value != "" && credential.MatchString(e.Name+"="+e.Value) {
					t.Errorf("%s: %s=%q looks like an inlined credential", name, e.Name, e.Value)
				}
			}
		}
	}
	// TLS from a Secret, mounted as a directory so that renewals reach the gateway.
	certDir := filepath.Dir(envValue(gwc, "FLEETFLOW_TLS_CERT"))
	if certDir != filepath.Dir(envValue(gwc, "FLEETFLOW_TLS_KEY")) {
		t.Errorf("certificate and key in different directories")
	}
	mount := volumeMountAt(gwc, certDir)
	if mount == nil || mount.SubPath != "" {
		t.Errorf("gateway: no whole-directory mount at %s for the certificate", certDir)
	} else if v := volume(gw.Spec.Template.Spec, mount.Name); v == nil || v.Secret == nil || v.Secret.SecretName == "" {
		t.Errorf("gateway: the certificate's volume %s is not a Secret", mount.Name)
	}

	if production {
		if len(r.monitors) != 1 {
			t.Fatalf("%d ServiceMonitors, want 1", len(r.monitors))
		}
		sel, err := metav1.LabelSelectorAsSelector(&r.monitors[0].Spec.Selector)
		if err != nil {
			t.Fatal(err)
		}
		var scraped []string
		for _, s := range r.services {
			if sel.Matches(labels.Set(s.Labels)) {
				scraped = append(scraped, s.Spec.Selector["app.kubernetes.io/component"])
				if len(s.Spec.Ports) != 1 || s.Spec.Ports[0].Name != r.monitors[0].Spec.Endpoints[0].Port {
					t.Errorf("ServiceMonitor port %q not on Service %s", r.monitors[0].Spec.Endpoints[0].Port, s.Name)
				}
			}
		}
		slices.Sort(scraped)
		if !slices.Equal(scraped, []string{"gateway", "worker"}) {
			t.Errorf("the ServiceMonitor scrapes the Services of %v, want gateway and worker", scraped)
		}
		if len(lb.Spec.LoadBalancerSourceRanges) == 0 {
			t.Error("production LoadBalancer: no source ranges")
		}
		// Behind a transaction-mode pooler, LISTEN and the migration's session lock take the direct URL.
		listen := envVar(gwc, "FLEETFLOW_DATABASE_LISTEN_URL").ValueFrom.SecretKeyRef
		migrateURL := envVar(mc, "FLEETFLOW_DATABASE_URL").ValueFrom.SecretKeyRef
		pooled := envVar(gwc, "FLEETFLOW_DATABASE_URL").ValueFrom.SecretKeyRef
		if listen.Key != migrateURL.Key || listen.Key == pooled.Key || listen.Name != pooled.Name {
			t.Errorf("production: LISTEN from %s/%s, migrate from %s/%s, pools from %s/%s", listen.Name, listen.Key,
				migrateURL.Name, migrateURL.Key, pooled.Name, pooled.Key)
		}
		for _, want := range []string{"FLEETFLOW_DEVICE_CA", "FLEETFLOW_NATS_CA"} {
			if p := envValue(gwc, want); p == "" || volumeMountAt(gwc, filepath.Dir(p)) == nil {
				t.Errorf("gateway: %s = %q is not a mounted file", want, p)
			}
		}
		for _, want := range []string{"TEMPORAL_TLS_CLIENT_CERT_PATH", "TEMPORAL_TLS_SERVER_CA_CERT_PATH"} {
			if p := envValue(wc, want); p == "" || volumeMountAt(wc, filepath.Dir(p)) == nil {
				t.Errorf("worker: %s = %q is not a mounted file", want, p)
			}
		}
		if len(wc.EnvFrom) != 1 || wc.EnvFrom[0].SecretRef == nil {
			t.Errorf("worker: the Temporal Secret is not in envFrom: %+v", wc.EnvFrom)
		}
		checkNetworkPolicies(t, r, gw, worker)
	} else {
		if len(r.monitors) != 0 {
			t.Error("a ServiceMonitor by default: its CRD may not exist in the cluster")
		}
		if len(r.policies) != 0 {
			t.Error("NetworkPolicies by default")
		}
	}
}

// checkNetworkPolicies: devices reach the gateways' MQTT port from anywhere; metrics ports only from the
// configured peers; nothing else is admitted.
func checkNetworkPolicies(t *testing.T, r rendered, gw, worker *appsv1.Deployment) {
	t.Helper()
	if len(r.policies) != 2 {
		t.Fatalf("%d NetworkPolicies, want 2", len(r.policies))
	}
	for _, d := range []*appsv1.Deployment{gw, worker} {
		var np *networkingv1.NetworkPolicy
		for _, p := range r.policies {
			if selects(&p.Spec.PodSelector, d.Spec.Template.Labels) {
				np = p
			}
		}
		if np == nil {
			t.Errorf("no NetworkPolicy selects %s", d.Name)
			continue
		}
		c := d.Spec.Template.Spec.Containers[0]
		open := map[string]bool{} // port names admitted from anywhere
		restricted := map[string]bool{}
		for _, rule := range np.Spec.Ingress {
			for _, p := range rule.Ports {
				if p.Port == nil || containerPort(&c, p.Port.String()) == 0 {
					t.Errorf("%s: NetworkPolicy admits unknown port %v", d.Name, p.Port)
					continue
				}
				if len(rule.From) == 0 {
					open[p.Port.String()] = true
				} else {
					restricted[p.Port.String()] = true
				}
			}
			if len(rule.Ports) == 0 {
				t.Errorf("%s: an ingress rule admits every port", d.Name)
			}
		}
		wantOpen := map[string]bool{}
		if d == gw {
			wantOpen["mqtts"] = true
		}
		if !mapsEqual(open, wantOpen) || !restricted["metrics"] {
			t.Errorf("%s: ports open to all %v, restricted %v; want %v open and metrics restricted", d.Name, open, restricted, wantOpen)
		}
	}
}

func checkPodSecurity(t *testing.T, name string, pod corev1.PodSpec) {
	t.Helper()
	psc := pod.SecurityContext
	if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot {
		t.Errorf("%s: pod does not require runAsNonRoot", name)
	}
	if psc != nil && psc.RunAsUser != nil && *psc.RunAsUser == 0 {
		t.Errorf("%s: runs as uid 0", name)
	}
	if psc == nil || psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("%s: no RuntimeDefault seccomp profile", name)
	}
	if pod.AutomountServiceAccountToken == nil || *pod.AutomountServiceAccountToken {
		t.Errorf("%s: mounts a service account token it never uses", name)
	}
	for _, c := range pod.Containers {
		sc := c.SecurityContext
		if sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
			t.Errorf("%s/%s: root file system not read-only", name, c.Name)
		}
		if sc == nil || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
			t.Errorf("%s/%s: privilege escalation allowed", name, c.Name)
		}
		if sc == nil || sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") {
			t.Errorf("%s/%s: capabilities not dropped", name, c.Name)
		}
		if sc != nil && sc.Privileged != nil && *sc.Privileged {
			t.Errorf("%s/%s: privileged", name, c.Name)
		}
		if strings.HasSuffix(c.Image, ":latest") || !strings.Contains(c.Image, ":") {
			t.Errorf("%s/%s: image %q not pinned", name, c.Name, c.Image)
		}
	}
}

// checkPodWiring: mounts name volumes that exist, and probes name ports that exist.
func checkPodWiring(t *testing.T, name string, pod corev1.PodSpec) {
	t.Helper()
	for _, c := range pod.Containers {
		for _, m := range c.VolumeMounts {
			if volume(pod, m.Name) == nil {
				t.Errorf("%s/%s: mount of unknown volume %s", name, c.Name, m.Name)
			}
		}
		for _, p := range []*corev1.Probe{c.StartupProbe, c.ReadinessProbe, c.LivenessProbe} {
			if p == nil {
				continue
			}
			port := ""
			switch {
			case p.HTTPGet != nil:
				port = p.HTTPGet.Port.String()
			case p.TCPSocket != nil:
				port = p.TCPSocket.Port.String()
			}
			if containerPort(&c, port) == 0 {
				t.Errorf("%s/%s: probe on unknown port %q", name, c.Name, port)
			}
		}
	}
}

func checkProbe(t *testing.T, what string, c *corev1.Container, p *corev1.Probe, path string) {
	t.Helper()
	switch {
	case p == nil:
		t.Errorf("%s: none", what)
	case path == "" && p.TCPSocket == nil:
		t.Errorf("%s: want a TCP probe, got %+v", what, p.ProbeHandler)
	case path != "" && (p.HTTPGet == nil || p.HTTPGet.Path != path):
		t.Errorf("%s: want GET %s, got %+v", what, path, p.ProbeHandler)
	}
}

func container(t *testing.T, obj any, name string) *corev1.Container {
	t.Helper()
	var spec corev1.PodSpec
	switch o := obj.(type) {
	case *appsv1.Deployment:
		spec = o.Spec.Template.Spec
	case *batchv1.Job:
		spec = o.Spec.Template.Spec
	}
	for i := range spec.Containers {
		if spec.Containers[i].Name == name {
			return &spec.Containers[i]
		}
	}
	t.Fatalf("no container %s", name)
	return nil
}

// containerPort resolves a probe's or Service's port (name or number) to a container port, 0 if none.
func containerPort(c *corev1.Container, port string) int32 {
	for _, p := range c.Ports {
		if p.Name == port || fmt.Sprint(p.ContainerPort) == port {
			return p.ContainerPort
		}
	}
	return 0
}

func envVar(c *corev1.Container, name string) *corev1.EnvVar {
	for i := range c.Env {
		if c.Env[i].Name == name {
			return &c.Env[i]
		}
	}
	return nil
}

func envValue(c *corev1.Container, name string) string {
	if e := envVar(c, name); e != nil {
		return e.Value
	}
	return ""
}

func volumeMountAt(c *corev1.Container, dir string) *corev1.VolumeMount {
	for i := range c.VolumeMounts {
		if c.VolumeMounts[i].MountPath == dir {
			return &c.VolumeMounts[i]
		}
	}
	return nil
}

func volume(pod corev1.PodSpec, name string) *corev1.Volume {
	for i := range pod.Volumes {
		if pod.Volumes[i].Name == name {
			return &pod.Volumes[i]
		}
	}
	return nil
}

func selects(sel any, podLabels map[string]string) bool {
	switch s := sel.(type) {
	case map[string]string:
		return len(s) > 0 && labels.SelectorFromSet(s).Matches(labels.Set(podLabels))
	case *metav1.LabelSelector:
		ls, err := metav1.LabelSelectorAsSelector(s)
		return err == nil && !ls.Empty() && ls.Matches(labels.Set(podLabels))
	}
	return false
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
