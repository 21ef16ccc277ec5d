package main

// Checks of the chart's operability values: umbrella-chart globals, image registry and digest,
// common labels, pod and container security context, SELinux, extra env/volumes, the OpenShift
// SecurityContextConstraints and the PrometheusRule.

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"slices"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"
)

var (
	wantImage          = flag.String("want-image", "", "exact image of the driver container")
	wantPullSecrets    = flag.String("want-pull-secrets", "", "comma-separated imagePullSecrets names, in order")
	wantCommonLabel    = flag.String("want-common-label", "", "key=value label every rendered object must carry")
	wantSCC            = flag.Bool("want-scc", false, "a SecurityContextConstraints must be rendered")
	wantSELinuxType    = flag.String("want-selinux-type", "", "seLinuxOptions.type of the driver container")
	wantExtraEnv       = flag.String("want-extra-env", "", "an env var name the driver container must have")
	wantExtraVolume    = flag.String("want-extra-volume", "", "a volume name the pod must have, mounted by the driver")
	wantSELinuxArg     = flag.String("want-selinux-context", "system_u:object_r:container_file_t:s0", "expected --selinux-context")
	wantPrometheusRule = flag.Bool("want-prometheusrule", false, "a PrometheusRule must be rendered")
	extractRules       = flag.String("extract-rules", "", "write the PrometheusRule's spec (a Prometheus rule file) to this path")
	wantDashboard      = flag.Bool("want-dashboard", false, "a Grafana dashboard ConfigMap must be rendered")
)

var (
	sccs  []unstructured.Unstructured
	rules []unstructured.Unstructured
)

// decodeOperabilityObject handles the kinds only operability values render; false if the kind is not one.
func decodeOperabilityObject(c *checks, where, kind string, doc []byte) bool {
	var obj unstructured.Unstructured
	switch kind {
	case "security.openshift.io/v1/SecurityContextConstraints":
		err := yaml.UnmarshalStrict(doc, &obj.Object)
		c.check(err == nil, "%s decodes strictly as an object%s", where, errSuffix(err))
		sccs = append(sccs, obj)
	case "monitoring.coreos.com/v1/PrometheusRule":
		err := yaml.UnmarshalStrict(doc, &obj.Object)
		c.check(err == nil, "%s decodes strictly as an object%s", where, errSuffix(err))
		rules = append(rules, obj)
	default:
		return false
	}
	return true
}

func checkOperability(c *checks, docs [][]byte, ds *appsv1.DaemonSet, csiDriver *storagev1.CSIDriver, serviceAccount, namespace string) {
	pod := &ds.Spec.Template.Spec
	driver := findContainer(pod, "driver")
	if driver == nil {
		return
	}
	if csiDriver != nil {
		c.check(csiDriver.Spec.SELinuxMount != nil && *csiDriver.Spec.SELinuxMount, "CSIDriver seLinuxMount: true (kubelet passes the pod's context= mount flag)")
	}
	arg, _ := flagValue(driver.Args, "selinux-context")
	c.check(arg == *wantSELinuxArg, "driver --selinux-context=%s (got %q)", *wantSELinuxArg, arg)

	psc := pod.SecurityContext
	c.check(psc != nil && psc.SeccompProfile != nil && psc.SeccompProfile.Type == corev1.SeccompProfileTypeRuntimeDefault,
		"pod securityContext seccompProfile RuntimeDefault")
	sc := driver.SecurityContext
	c.check(sc != nil && sc.ReadOnlyRootFilesystem != nil && *sc.ReadOnlyRootFilesystem && sc.RunAsNonRoot != nil && !*sc.RunAsNonRoot,
		"driver keeps readOnlyRootFilesystem: true and runAsNonRoot: false")
	if *wantSELinuxType != "" {
		c.check(sc != nil && sc.SELinuxOptions != nil && sc.SELinuxOptions.Type == *wantSELinuxType,
			"driver seLinuxOptions.type is %q", *wantSELinuxType)
	} else {
		c.check(sc == nil || sc.SELinuxOptions == nil, "driver has no seLinuxOptions by default")
	}

	if *wantImage != "" {
		c.check(driver.Image == *wantImage, "driver image is %q (got %q)", *wantImage, driver.Image)
	}
	if *wantPullSecrets != "" {
		var names []string
		for _, s := range pod.ImagePullSecrets {
			names = append(names, s.Name)
		}
		c.check(strings.Join(names, ",") == *wantPullSecrets, "imagePullSecrets are %s (got %v)", *wantPullSecrets, names)
	}
	if *wantExtraEnv != "" {
		found := false
		for _, e := range driver.Env {
			found = found || e.Name == *wantExtraEnv
		}
		c.check(found, "driver env has %s", *wantExtraEnv)
	}
	if *wantExtraVolume != "" {
		c.check(hostPathOf(pod, *wantExtraVolume) != nil || slices.ContainsFunc(pod.Volumes, func(v corev1.Volume) bool { return v.Name == *wantExtraVolume }),
			"pod has volume %s", *wantExtraVolume)
		c.check(mountOf(driver, *wantExtraVolume) != nil, "driver mounts volume %s", *wantExtraVolume)
	}
	if *wantCommonLabel != "" {
		key, value, _ := strings.Cut(*wantCommonLabel, "=")
		for i, doc := range docs {
			var obj unstructured.Unstructured
			if err := yaml.Unmarshal(doc, &obj.Object); err != nil {
				continue
			}
			c.check(obj.GetLabels()[key] == value, "document %d (%s %s) has label %s", i, obj.GetKind(), obj.GetName(), *wantCommonLabel)
		}
		c.check(ds.Spec.Template.Labels[key] == value, "driver pods have label %s", *wantCommonLabel)
		_, inSelector := ds.Spec.Selector.MatchLabels[key]
		c.check(!inSelector, "common labels stay out of the DaemonSet's immutable selector")
	}

	checkDashboard(c, docs)
	if *wantSCC {
		c.check(len(sccs) == 1, "exactly one SecurityContextConstraints (%d)", len(sccs))
		if len(sccs) == 1 {
			checkSCC(c, &sccs[0], fmt.Sprintf("system:serviceaccount:%s:%s", namespace, serviceAccount))
		}
	} else {
		c.check(len(sccs) == 0, "no SecurityContextConstraints by default (%d)", len(sccs))
	}
	if *wantPrometheusRule {
		c.check(len(rules) == 1, "exactly one PrometheusRule (%d)", len(rules))
		if len(rules) == 1 && *extractRules != "" {
			spec, _, _ := unstructured.NestedMap(rules[0].Object, "spec")
			out, err := yaml.Marshal(spec)
			if err == nil {
				err = os.WriteFile(*extractRules, out, 0o644)
			}
			c.check(err == nil, "PrometheusRule spec written to %s as a rule file%s", *extractRules, errSuffix(err))
		}
	} else {
		c.check(len(rules) == 0, "no PrometheusRule by default (%d)", len(rules))
	}
}

func checkDashboard(c *checks, docs [][]byte) {
	found := 0
	for _, doc := range docs {
		var cm corev1.ConfigMap
		if err := yaml.Unmarshal(doc, &cm); err != nil || cm.Kind != "ConfigMap" {
			continue
		}
		body, ok := cm.Data["spire-csi-driver.json"]
		if !ok {
			continue
		}
		found++
		c.check(cm.Labels["grafana_dashboard"] == "1", "dashboard ConfigMap has the Grafana sidecar label grafana_dashboard=1")
		var dashboard struct {
			UID    string `json:"uid"`
			Panels []any  `json:"panels"`
		}
		err := json.Unmarshal([]byte(body), &dashboard)
		c.check(err == nil && dashboard.UID == "spire-csi-driver" && len(dashboard.Panels) > 0, "dashboard ConfigMap holds the dashboard JSON%s", errSuffix(err))
	}
	if *wantDashboard {
		c.check(found == 1, "exactly one dashboard ConfigMap (%d)", found)
	} else {
		c.check(found == 0, "no dashboard ConfigMap by default (%d)", found)
	}
}

func checkSCC(c *checks, scc *unstructured.Unstructured, user string) {
	known := []string{"apiVersion", "kind", "metadata", "priority", "allowPrivilegedContainer", "allowPrivilegeEscalation",
		"allowHostDirVolumePlugin", "allowHostIPC", "allowHostNetwork", "allowHostPID", "allowHostPorts", "readOnlyRootFilesystem",
		"allowedCapabilities", "defaultAddCapabilities", "requiredDropCapabilities", "fsGroup", "runAsUser", "seLinuxContext",
		"supplementalGroups", "seccompProfiles", "volumes", "users", "groups", "allowedUnsafeSysctls", "forbiddenSysctls",
		"allowedFlexVolumes", "defaultAllowPrivilegeEscalation"}
	for key := range scc.Object {
		c.check(slices.Contains(known, key), "SecurityContextConstraints field %q is a security.openshift.io/v1 field", key)
	}
	privileged, _, _ := unstructured.NestedBool(scc.Object, "allowPrivilegedContainer")
	hostDir, _, _ := unstructured.NestedBool(scc.Object, "allowHostDirVolumePlugin")
	c.check(privileged && hostDir, "SCC allows privileged containers and hostPath volumes")
	for _, strategy := range []string{"runAsUser", "seLinuxContext", "fsGroup", "supplementalGroups"} {
		kind, _, _ := unstructured.NestedString(scc.Object, strategy, "type")
		c.check(kind == "RunAsAny", "SCC %s.type RunAsAny (got %q)", strategy, kind)
	}
	users, _, _ := unstructured.NestedStringSlice(scc.Object, "users")
	c.check(slices.Equal(users, []string{user}), "SCC is granted to the driver's ServiceAccount only (%v)", users)
	volumes, _, _ := unstructured.NestedStringSlice(scc.Object, "volumes")
	c.check(slices.Contains(volumes, "hostPath") && slices.Contains(volumes, "emptyDir"), "SCC allows hostPath and emptyDir volumes (%v)", volumes)
}
