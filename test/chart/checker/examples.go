package main

import (
	"fmt"
	"regexp"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// Checks that examples do what their comments claim, beyond decoding: users copy them.

type podOf struct {
	where string
	spec  *corev1.PodSpec
}

var loopbackUpstream = regexp.MustCompile(`address:\s*127\.0\.0\.1,\s*port_value:\s*(\d+)`)

func commandLine(ctr corev1.Container) string {
	return strings.Join(append(append([]string{}, ctr.Command...), ctr.Args...), " ")
}

// checkVaultLogin: Vault's JWT auth login is a POST of {"role", "jwt"} to /v1/auth/jwt/login; a GET
// with a bearer header is refused by Vault.
func checkVaultLogin(c *checks, where string, pod *corev1.PodSpec) {
	for _, ctr := range pod.Containers {
		line := commandLine(ctr)
		if !strings.Contains(line, "/v1/auth/jwt/login") {
			continue
		}
		posts := strings.Contains(line, "--json") || strings.Contains(line, "-X POST") || strings.Contains(line, "--data")
		c.check(posts && strings.Contains(line, `\"role\"`) && strings.Contains(line, `\"jwt\"`),
			"%s: %s logs in to Vault with a POST of role and jwt", where, ctr.Name)
	}
}

// checkLoopbackUpstreams: a proxy configured from a ConfigMap to forward to 127.0.0.1:<port> needs
// a container of the same pod, other than the proxy, serving that port.
func checkLoopbackUpstreams(c *checks, pods []podOf, configMaps map[string]corev1.ConfigMap) {
	for _, p := range pods {
		for _, v := range p.spec.Volumes {
			if v.ConfigMap == nil {
				continue
			}
			cm, ok := configMaps[v.ConfigMap.Name]
			if !ok {
				continue
			}
			for _, text := range cm.Data {
				for _, m := range loopbackUpstream.FindAllStringSubmatch(text, -1) {
					c.check(servesPort(p.spec, v.Name, m[1]), "%s: a container besides the proxy serves 127.0.0.1:%s, where ConfigMap %s forwards", p.where, m[1], cm.Name)
				}
			}
		}
	}
}

func servesPort(pod *corev1.PodSpec, proxyConfigVolume, port string) bool {
	for _, ctr := range pod.Containers {
		if slices.ContainsFunc(ctr.VolumeMounts, func(m corev1.VolumeMount) bool { return m.Name == proxyConfigVolume }) {
			continue
		}
		if slices.ContainsFunc(ctr.Ports, func(cp corev1.ContainerPort) bool { return fmt.Sprint(cp.ContainerPort) == port }) ||
			strings.Contains(commandLine(ctr), ":"+port) {
			return true
		}
	}
	return false
}
