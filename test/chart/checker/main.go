// Command checker decodes every object of a `helm template` render strictly against the
// Kubernetes API types (unknown or duplicate fields are errors) and asserts what the
// spire-csi-driver chart must produce. It prints one line per check ("ok - ..." or
// "not ok - ...") and a last line "RESULT passed=N failed=M"; it exits 1 if any check failed.
//
// Usage: checker -manifest rendered.yaml -kubelet-root /var/lib/kubelet [-metrics-port 9809] [-health-port 9808]
//
//	[-want-podmonitor] [-namespace spire-system] [-metadata-dir ...] [-agent-socket-dir ...]
//	[-want-toleration-key key] [-want-memory-limit 512Mi] [-want-priority-class name]
package main

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/yaml"
)

type checks struct{ passed, failed int }

func (c *checks) check(ok bool, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if ok {
		c.passed++
		fmt.Println("ok - " + msg)
	} else {
		c.failed++
		fmt.Println("not ok - " + msg)
	}
}

type options struct {
	manifest, kubeletRoot, namespace, metadataDir, agentSocketDir string
	wantTolerationKey, wantMemoryLimit, wantPriorityClass         string
	metricsPort, healthPort                                       int
	wantPodMonitor, decodeOnly                                    bool
	knownAttributes                                               []string
}

type header struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
}

func main() {
	var o options
	flag.StringVar(&o.manifest, "manifest", "", "rendered multi-document YAML")
	flag.StringVar(&o.kubeletRoot, "kubelet-root", "/var/lib/kubelet", "expected kubeletRoot")
	flag.StringVar(&o.namespace, "namespace", "", "expected namespace of namespaced objects")
	flag.StringVar(&o.metadataDir, "metadata-dir", "/var/lib/spire-csi-driver/volumes", "expected metadata host dir")
	flag.StringVar(&o.agentSocketDir, "agent-socket-dir", "/run/spire/agent/sockets/csi.spiffe.io/admin", "expected agent admin socket host dir")
	flag.StringVar(&o.wantTolerationKey, "want-toleration-key", "", "a toleration key that must be present")
	flag.StringVar(&o.wantMemoryLimit, "want-memory-limit", "", "expected memory limit of the driver container")
	flag.StringVar(&o.wantPriorityClass, "want-priority-class", "system-node-critical", "expected priorityClassName")
	flag.IntVar(&o.metricsPort, "metrics-port", 9809, "expected metrics port; 0 = metrics disabled")
	flag.IntVar(&o.healthPort, "health-port", 9808, "expected port of /healthz and /readyz")
	flag.BoolVar(&o.wantPodMonitor, "want-podmonitor", false, "a PodMonitor must be rendered")
	flag.BoolVar(&o.decodeOnly, "decode-only", false, "only decode strictly and check csi.spire.io volumes (examples, deploy/)")
	knownAttributes := flag.String("known-attributes", "csi.spire.io/layout,csi.spire.io/cert-file,csi.spire.io/key-file,csi.spire.io/bundle-file,csi.spire.io/fs-group",
		"comma-separated volume attributes the driver accepts")
	flag.Parse()
	o.knownAttributes = strings.Split(*knownAttributes, ",")

	c := &checks{}
	raw, err := os.ReadFile(o.manifest)
	if err != nil {
		c.check(false, "read %s: %v", o.manifest, err)
		finish(c)
	}
	docs := splitDocuments(raw)
	c.check(len(docs) > 0, "render contains objects (%d)", len(docs))

	var (
		csiDrivers []storagev1.CSIDriver
		daemonSets []appsv1.DaemonSet
		accounts   []corev1.ServiceAccount
		monitors   []unstructured.Unstructured
		pods       []podOf
		configMaps = map[string]corev1.ConfigMap{}
	)
	for i, doc := range docs {
		var h header
		if err := yaml.Unmarshal(doc, &h); err != nil {
			c.check(false, "document %d: not YAML: %v", i, err)
			continue
		}
		where := fmt.Sprintf("document %d (%s %s)", i, h.APIVersion, h.Kind)
		switch h.APIVersion + "/" + h.Kind {
		case "storage.k8s.io/v1/CSIDriver":
			var obj storagev1.CSIDriver
			err := strict(doc, &obj)
			c.check(err == nil, "%s decodes strictly as storage/v1 CSIDriver%s", where, errSuffix(err))
			csiDrivers = append(csiDrivers, obj)
		case "apps/v1/DaemonSet":
			var obj appsv1.DaemonSet
			err := strict(doc, &obj)
			c.check(err == nil, "%s decodes strictly as apps/v1 DaemonSet%s", where, errSuffix(err))
			daemonSets = append(daemonSets, obj)
		case "v1/ServiceAccount":
			var obj corev1.ServiceAccount
			err := strict(doc, &obj)
			c.check(err == nil, "%s decodes strictly as v1 ServiceAccount%s", where, errSuffix(err))
			accounts = append(accounts, obj)
		case "monitoring.coreos.com/v1/PodMonitor":
			var obj unstructured.Unstructured
			err := yaml.UnmarshalStrict(doc, &obj.Object)
			c.check(err == nil, "%s decodes strictly as an object%s", where, errSuffix(err))
			monitors = append(monitors, obj)
		case "v1/Pod":
			var obj corev1.Pod
			err := strict(doc, &obj)
			c.check(err == nil, "%s decodes strictly as v1 Pod%s", where, errSuffix(err))
			checkCSIVolumes(c, where, &obj.Spec, o.knownAttributes)
			checkVaultLogin(c, where, &obj.Spec)
			pods = append(pods, podOf{where, &obj.Spec})
		case "apps/v1/Deployment":
			var obj appsv1.Deployment
			err := strict(doc, &obj)
			c.check(err == nil, "%s decodes strictly as apps/v1 Deployment%s", where, errSuffix(err))
			checkCSIVolumes(c, where, &obj.Spec.Template.Spec, o.knownAttributes)
			checkVaultLogin(c, where, &obj.Spec.Template.Spec)
			pods = append(pods, podOf{where, &obj.Spec.Template.Spec})
		case "batch/v1/Job":
			var obj batchv1.Job
			err := strict(doc, &obj)
			c.check(err == nil, "%s decodes strictly as batch/v1 Job%s", where, errSuffix(err))
			checkCSIVolumes(c, where, &obj.Spec.Template.Spec, o.knownAttributes)
			checkVaultLogin(c, where, &obj.Spec.Template.Spec)
			pods = append(pods, podOf{where, &obj.Spec.Template.Spec})
		case "v1/ConfigMap":
			var obj corev1.ConfigMap
			err := strict(doc, &obj)
			c.check(err == nil, "%s decodes strictly as v1 ConfigMap%s", where, errSuffix(err))
			configMaps[obj.Name] = obj
		case "v1/Service":
			var obj corev1.Service
			err := strict(doc, &obj)
			c.check(err == nil, "%s decodes strictly as v1 Service%s", where, errSuffix(err))
		case "spire.spiffe.io/v1alpha1/ClusterSPIFFEID":
			var obj unstructured.Unstructured
			err := yaml.UnmarshalStrict(doc, &obj.Object)
			c.check(err == nil, "%s decodes strictly as an object%s", where, errSuffix(err))
			tmpl, found, _ := unstructured.NestedString(obj.Object, "spec", "spiffeIDTemplate")
			c.check(found && strings.HasPrefix(tmpl, "spiffe://"), "%s has spec.spiffeIDTemplate spiffe://... (%q)", where, tmpl)
			spec, _, _ := unstructured.NestedMap(obj.Object, "spec")
			for key := range spec {
				c.check(slices.Contains([]string{"spiffeIDTemplate", "namespaceSelector", "podSelector", "dnsNameTemplates",
					"workloadSelectorTemplates", "ttl", "jwtTtl", "federatesWith", "admin", "downstream", "className",
					"hint", "fallback", "autoPopulateDNSNames"}, key), "%s spec field %q is a ClusterSPIFFEID field", where, key)
			}
		default:
			if !decodeOperabilityObject(c, where, h.APIVersion+"/"+h.Kind, doc) {
				c.check(false, "%s: unexpected kind; teach the checker its Go type", where)
			}
		}
	}
	checkLoopbackUpstreams(c, pods, configMaps)
	if o.decodeOnly {
		finish(c)
	}

	c.check(len(csiDrivers) == 1, "exactly one CSIDriver (%d)", len(csiDrivers))
	c.check(len(daemonSets) == 1, "exactly one DaemonSet (%d)", len(daemonSets))
	c.check(len(accounts) == 1, "exactly one ServiceAccount (%d)", len(accounts))
	if o.wantPodMonitor {
		c.check(len(monitors) == 1, "exactly one PodMonitor (%d)", len(monitors))
	} else {
		c.check(len(monitors) == 0, "no PodMonitor (%d)", len(monitors))
	}
	if len(csiDrivers) == 1 {
		checkCSIDriver(c, &csiDrivers[0])
	}
	if len(daemonSets) == 1 {
		sa := ""
		if len(accounts) == 1 {
			sa = accounts[0].Name
			checkNamespaced(c, "ServiceAccount", accounts[0].Name, accounts[0].Namespace, o.namespace)
		}
		checkDaemonSet(c, &daemonSets[0], sa, o)
		var csiDriver *storagev1.CSIDriver
		if len(csiDrivers) == 1 {
			csiDriver = &csiDrivers[0]
		}
		checkOperability(c, docs, &daemonSets[0], csiDriver, sa, o.namespace)
		if len(monitors) == 1 {
			checkPodMonitor(c, &monitors[0], &daemonSets[0], o)
		}
	}
	finish(c)
}

func finish(c *checks) {
	fmt.Printf("RESULT passed=%d failed=%d\n", c.passed, c.failed)
	if c.failed > 0 {
		os.Exit(1)
	}
	os.Exit(0)
}

// strict decodes YAML into a typed object rejecting unknown and duplicate fields.
func strict(doc []byte, into any) error { return yaml.UnmarshalStrict(doc, into) }

func errSuffix(err error) string {
	if err == nil {
		return ""
	}
	return ": " + err.Error()
}

var separator = regexp.MustCompile(`(?m)^---[ \t]*$`)

// splitDocuments splits a multi-document YAML stream, dropping documents with only comments.
func splitDocuments(raw []byte) [][]byte {
	var docs [][]byte
	for _, part := range separator.Split(string(raw), -1) {
		meaningful := false
		for _, line := range strings.Split(part, "\n") {
			t := strings.TrimSpace(line)
			if t != "" && !strings.HasPrefix(t, "#") {
				meaningful = true
				break
			}
		}
		if meaningful {
			docs = append(docs, bytes.TrimSpace([]byte(part)))
		}
	}
	return docs
}

func checkNamespaced(c *checks, kind, name, namespace, want string) {
	c.check(len(validation.IsDNS1123Subdomain(name)) == 0, "%s name %q is a DNS-1123 subdomain", kind, name)
	if want != "" {
		c.check(namespace == want, "%s %s is in namespace %q (got %q)", kind, name, want, namespace)
	}
}

func checkCSIDriver(c *checks, d *storagev1.CSIDriver) {
	s := d.Spec
	c.check(d.Name == "csi.spire.io", "CSIDriver is named csi.spire.io (got %q)", d.Name)
	c.check(s.AttachRequired != nil && !*s.AttachRequired, "CSIDriver attachRequired: false")
	c.check(s.PodInfoOnMount != nil && *s.PodInfoOnMount, "CSIDriver podInfoOnMount: true")
	c.check(slices.Equal(s.VolumeLifecycleModes, []storagev1.VolumeLifecycleMode{storagev1.VolumeLifecycleEphemeral}),
		"CSIDriver volumeLifecycleModes: [Ephemeral] (got %v)", s.VolumeLifecycleModes)
	c.check(s.FSGroupPolicy != nil && *s.FSGroupPolicy == storagev1.FileFSGroupPolicy, "CSIDriver fsGroupPolicy: File")
	c.check(s.RequiresRepublish != nil && !*s.RequiresRepublish, "CSIDriver requiresRepublish: false")
}

func findContainer(pod *corev1.PodSpec, name string) *corev1.Container {
	for i := range pod.Containers {
		if pod.Containers[i].Name == name {
			return &pod.Containers[i]
		}
	}
	return nil
}

func hostPathOf(pod *corev1.PodSpec, volume string) *corev1.HostPathVolumeSource {
	for _, v := range pod.Volumes {
		if v.Name == volume {
			return v.HostPath
		}
	}
	return nil
}

func mountOf(ctr *corev1.Container, volume string) *corev1.VolumeMount {
	for i := range ctr.VolumeMounts {
		if ctr.VolumeMounts[i].Name == volume {
			return &ctr.VolumeMounts[i]
		}
	}
	return nil
}

// flagValue returns the value of --name=value (or -name=value) in args, and whether it is there.
func flagValue(args []string, name string) (string, bool) {
	for _, a := range args {
		for _, prefix := range []string{"--" + name + "=", "-" + name + "="} {
			if strings.HasPrefix(a, prefix) {
				return strings.TrimPrefix(a, prefix), true
			}
		}
	}
	return "", false
}

func checkDaemonSet(c *checks, ds *appsv1.DaemonSet, serviceAccount string, o options) {
	checkNamespaced(c, "DaemonSet", ds.Name, ds.Namespace, o.namespace)
	pod := &ds.Spec.Template.Spec
	root := strings.TrimSuffix(o.kubeletRoot, "/")

	sel, err := metav1LabelSelector(ds)
	c.check(err == nil && sel.Matches(labels.Set(ds.Spec.Template.Labels)), "DaemonSet selector matches its pod template labels")
	c.check(pod.PriorityClassName == o.wantPriorityClass, "priorityClassName is %q (got %q)", o.wantPriorityClass, pod.PriorityClassName)
	c.check(serviceAccount != "" && pod.ServiceAccountName == serviceAccount, "pod runs as the chart's ServiceAccount %q (got %q)", serviceAccount, pod.ServiceAccountName)
	c.check(!pod.HostNetwork, "pod does not use the host network")

	// Names and references inside the pod.
	volumes := map[string]bool{}
	for _, v := range pod.Volumes {
		c.check(!volumes[v.Name], "volume name %q is unique", v.Name)
		volumes[v.Name] = true
		c.check(len(validation.IsDNS1123Label(v.Name)) == 0, "volume name %q is a DNS-1123 label", v.Name)
	}
	for _, ctr := range pod.Containers {
		ports := map[string]bool{}
		for _, p := range ctr.Ports {
			ports[p.Name] = true
			c.check(len(validation.IsValidPortName(p.Name)) == 0, "%s: port name %q is valid", ctr.Name, p.Name)
			c.check(len(validation.IsValidPortNum(int(p.ContainerPort))) == 0, "%s: port %d is valid", ctr.Name, p.ContainerPort)
		}
		for _, m := range ctr.VolumeMounts {
			c.check(volumes[m.Name], "%s: volumeMount %q refers to a pod volume", ctr.Name, m.Name)
			c.check(strings.HasPrefix(m.MountPath, "/"), "%s: mountPath %q is absolute", ctr.Name, m.MountPath)
		}
		c.check(ctr.Image != "" && strings.Contains(ctr.Image, ":") && !strings.HasSuffix(ctr.Image, ":"), "%s: image %q has a tag", ctr.Name, ctr.Image)
		for _, probe := range []*corev1.Probe{ctr.LivenessProbe, ctr.ReadinessProbe} {
			if probe != nil && probe.HTTPGet != nil && probe.HTTPGet.Port.StrVal != "" {
				// kubelet resolves a probe's named port only in the probed container's own ports.
				found := false
				for _, p := range ctr.Ports {
					found = found || p.Name == probe.HTTPGet.Port.StrVal
				}
				c.check(found, "%s: probe port %q is declared on the probed container itself", ctr.Name, probe.HTTPGet.Port.StrVal)
			}
		}
	}

	driver := findContainer(pod, "driver")
	c.check(driver != nil, "driver container exists")
	c.check(len(pod.Containers) == 1, "one container: the driver registers itself and serves its own liveness (got %d)", len(pod.Containers))
	if driver == nil {
		return
	}

	sc := driver.SecurityContext
	c.check(sc != nil && sc.Privileged != nil && *sc.Privileged, "driver is privileged")
	c.check(sc != nil && sc.RunAsUser != nil && *sc.RunAsUser == 0, "driver runs as uid 0")

	// The three kubelet-side hostPaths and the driver's own.
	pods := hostPathOf(pod, "pods-dir")
	c.check(pods != nil && pods.Path == root+"/pods", "hostPath pods-dir is %s/pods", root)
	m := mountOf(driver, "pods-dir")
	c.check(m != nil && m.MountPath == root+"/pods", "driver mounts the pods dir at the same path %s/pods", root)
	c.check(m != nil && m.MountPropagation != nil && *m.MountPropagation == corev1.MountPropagationBidirectional,
		"driver mounts the kubelet pods dir with mountPropagation Bidirectional")

	plugin := hostPathOf(pod, "plugin-dir")
	c.check(plugin != nil && plugin.Path == root+"/plugins/csi.spire.io", "hostPath plugin-dir is %s/plugins/csi.spire.io", root)
	c.check(plugin != nil && plugin.Type != nil && *plugin.Type == corev1.HostPathDirectoryOrCreate, "plugin-dir is DirectoryOrCreate")
	pm := mountOf(driver, "plugin-dir")
	c.check(pm != nil && pm.MountPath == "/csi", "driver mounts plugin-dir at /csi")
	sock, _ := flagValue(driver.Args, "plugin-socket")
	c.check(sock == "/csi/csi.sock", "driver --plugin-socket=/csi/csi.sock (got %q)", sock)

	reg := hostPathOf(pod, "registration-dir")
	c.check(reg != nil && reg.Path == root+"/plugins_registry", "hostPath registration-dir is %s/plugins_registry", root)
	c.check(reg != nil && reg.Type != nil && *reg.Type == corev1.HostPathDirectory, "registration-dir is Directory (kubelet creates it)")
	rm := mountOf(driver, "registration-dir")
	c.check(rm != nil && rm.MountPath == "/registration", "driver mounts registration-dir at /registration")
	regSock, _ := flagValue(driver.Args, "registration-socket")
	c.check(regSock == "/registration/csi.spire.io-reg.sock", "driver --registration-socket=/registration/csi.spire.io-reg.sock (got %q)", regSock)
	hostSock, _ := flagValue(driver.Args, "plugin-socket-host-path")
	c.check(hostSock == root+"/plugins/csi.spire.io/csi.sock", "driver --plugin-socket-host-path is the CSI socket on the host under kubeletRoot (%q)", hostSock)

	meta := hostPathOf(pod, "metadata-dir")
	c.check(meta != nil && meta.Path == o.metadataDir, "hostPath metadata-dir is %s", o.metadataDir)
	mm := mountOf(driver, "metadata-dir")
	md, _ := flagValue(driver.Args, "metadata-dir")
	c.check(mm != nil && mm.MountPath == md && md == o.metadataDir, "driver --metadata-dir is the mounted metadata dir (%q)", md)

	agent := hostPathOf(pod, "agent-admin-dir")
	c.check(agent != nil && agent.Path == o.agentSocketDir, "hostPath agent-admin-dir is %s", o.agentSocketDir)
	c.check(agent != nil && agent.Type != nil && *agent.Type == corev1.HostPathDirectoryOrCreate, "agent-admin-dir is DirectoryOrCreate")
	am := mountOf(driver, "agent-admin-dir")
	agentSock, _ := flagValue(driver.Args, "agent-socket")
	c.check(am != nil && strings.HasPrefix(agentSock, strings.TrimSuffix(am.MountPath, "/")+"/"),
		"driver --agent-socket (%q) lies in the mounted admin socket dir", agentSock)

	kr, _ := flagValue(driver.Args, "kubelet-root")
	c.check(kr == root, "driver --kubelet-root=%s (got %q)", root, kr)

	var nodeName *corev1.EnvVar
	for i := range driver.Env {
		if driver.Env[i].Name == "NODE_NAME" {
			nodeName = &driver.Env[i]
		}
	}
	c.check(nodeName != nil && nodeName.ValueFrom != nil && nodeName.ValueFrom.FieldRef != nil &&
		nodeName.ValueFrom.FieldRef.FieldPath == "spec.nodeName", "driver env NODE_NAME comes from spec.nodeName")

	// Health: kubelet's own probes on the driver's named port healthz; /metrics on its own port.
	// The agent-load flags are set from values, so an operator can see and tune them on the DaemonSet.
	for _, name := range []string{"max-agent-calls", "jwt-fetch-timeout", "agent-probe-timeout"} {
		value, ok := flagValue(driver.Args, name)
		c.check(ok && value != "", "driver passes --%s (%q)", name, value)
	}
	healthAddr, _ := flagValue(driver.Args, "health-address")
	c.check(healthAddr == fmt.Sprintf("0.0.0.0:%d", o.healthPort), "driver --health-address=0.0.0.0:%d (got %q)", o.healthPort, healthAddr)
	ports := map[string]int32{}
	for _, p := range driver.Ports {
		ports[p.Name] = p.ContainerPort
	}
	c.check(int(ports["healthz"]) == o.healthPort, "driver declares port healthz=%d", o.healthPort)
	lp := driver.LivenessProbe
	c.check(lp != nil && lp.HTTPGet != nil && lp.HTTPGet.Path == "/healthz" && lp.HTTPGet.Port.StrVal == "healthz",
		"driver liveness probe is kubelet's GET /healthz on the driver's port healthz")
	c.check(lp != nil && lp.TimeoutSeconds > 2, "liveness timeoutSeconds exceeds the driver's 2 s GetPluginInfo deadline")
	rp := driver.ReadinessProbe
	c.check(rp != nil && rp.HTTPGet != nil && rp.HTTPGet.Path == "/readyz" && rp.HTTPGet.Port.StrVal == "healthz",
		"driver readiness probe is GET /readyz on the port healthz")

	metricsAddr, hasMetricsFlag := flagValue(driver.Args, "metrics-address")
	c.check(hasMetricsFlag, "driver gets an explicit --metrics-address")
	if o.metricsPort > 0 {
		c.check(metricsAddr == fmt.Sprintf("0.0.0.0:%d", o.metricsPort), "driver --metrics-address=0.0.0.0:%d (got %q)", o.metricsPort, metricsAddr)
		c.check(len(driver.Ports) == 2 && int(ports["metrics"]) == o.metricsPort, "driver declares ports healthz and metrics=%d", o.metricsPort)
	} else {
		c.check(metricsAddr == "", "metrics disabled: --metrics-address is empty (got %q)", metricsAddr)
		c.check(len(driver.Ports) == 1, "metrics disabled: driver declares only the healthz port")
	}

	if o.wantTolerationKey != "" {
		found := false
		for _, t := range pod.Tolerations {
			found = found || t.Key == o.wantTolerationKey
		}
		c.check(found, "toleration with key %q is present", o.wantTolerationKey)
	} else {
		c.check(len(pod.Tolerations) == 1 && pod.Tolerations[0].Operator == corev1.TolerationOpExists && pod.Tolerations[0].Key == "",
			"default tolerations tolerate every taint")
	}
	if o.wantMemoryLimit != "" {
		want := resource.MustParse(o.wantMemoryLimit)
		got, ok := driver.Resources.Limits[corev1.ResourceMemory]
		c.check(ok && got.Cmp(want) == 0, "driver memory limit is %s (got %s)", o.wantMemoryLimit, got.String())
	}
}

func metav1LabelSelector(ds *appsv1.DaemonSet) (labels.Selector, error) {
	if ds.Spec.Selector == nil {
		return nil, fmt.Errorf("no selector")
	}
	return labels.ValidatedSelectorFromSet(ds.Spec.Selector.MatchLabels)
}

func checkPodMonitor(c *checks, pm *unstructured.Unstructured, ds *appsv1.DaemonSet, o options) {
	checkNamespaced(c, "PodMonitor", pm.GetName(), pm.GetNamespace(), o.namespace)
	match, found, err := unstructured.NestedStringMap(pm.Object, "spec", "selector", "matchLabels")
	c.check(err == nil && found && len(match) > 0 && labels.SelectorFromSet(match).Matches(labels.Set(ds.Spec.Template.Labels)),
		"PodMonitor spec.selector.matchLabels selects the driver pods")
	endpoints, found, err := unstructured.NestedSlice(pm.Object, "spec", "podMetricsEndpoints")
	c.check(err == nil && found && len(endpoints) == 1, "PodMonitor has one podMetricsEndpoint")
	if len(endpoints) == 1 {
		ep, _ := endpoints[0].(map[string]any)
		c.check(ep["port"] == "metrics" && ep["path"] == "/metrics", "PodMonitor scrapes port metrics, path /metrics (got %v %v)", ep["port"], ep["path"])
		for _, key := range []string{"interval", "scrapeTimeout"} {
			v, _ := ep[key].(string)
			c.check(regexp.MustCompile(`^([0-9]+(ms|s|m|h))+$`).MatchString(v), "PodMonitor %s %q is a Prometheus duration", key, v)
		}
		for key := range ep {
			c.check(slices.Contains([]string{"port", "path", "interval", "scrapeTimeout"}, key), "PodMonitor endpoint field %q is known", key)
		}
	}
	for key := range pm.Object {
		c.check(slices.Contains([]string{"apiVersion", "kind", "metadata", "spec"}, key), "PodMonitor top-level field %q is known", key)
	}
	spec, _, _ := unstructured.NestedMap(pm.Object, "spec")
	for key := range spec {
		c.check(slices.Contains([]string{"selector", "namespaceSelector", "podMetricsEndpoints"}, key), "PodMonitor spec field %q is known", key)
	}
}

// checkCSIVolumes asserts what the driver requires of a pod's csi.spire.io volumes.
func checkCSIVolumes(c *checks, where string, pod *corev1.PodSpec, known []string) {
	for _, v := range pod.Volumes {
		if v.CSI == nil || v.CSI.Driver != "csi.spire.io" {
			continue
		}
		c.check(v.CSI.ReadOnly != nil && *v.CSI.ReadOnly, "%s: csi.spire.io volume %q is readOnly: true", where, v.Name)
		for key := range v.CSI.VolumeAttributes {
			c.check(slices.Contains(known, key), "%s: volume %q attribute %q is one the driver knows", where, v.Name, key)
		}
		mounted := false
		for _, ctr := range append(append([]corev1.Container{}, pod.InitContainers...), pod.Containers...) {
			for _, m := range ctr.VolumeMounts {
				if m.Name == v.Name {
					mounted = true
					c.check(m.SubPath == "" && m.SubPathExpr == "", "%s: %s mounts %q without subPath (subPath never sees rotations)", where, ctr.Name, v.Name)
				}
			}
		}
		c.check(mounted, "%s: volume %q is mounted by a container", where, v.Name)
	}
}
