// Package k8s holds no code: it is the home of the Kubernetes manifests
// (base/, overlays/dev/, overlays/production/, a Kustomize base and its
// overlays) and of manifests_test.go, which checks them without a cluster,
// without Docker and without the kustomize engine.
//
// For the base and each overlay the test reads kustomization.yaml strictly
// (only the fields it understands: resources, patches by path,
// patchesStrategicMerge, images, configMapGenerator and secretGenerator with
// literals), decodes every manifest and patch file strictly into the
// k8s.io/api type of its kind (an unknown field, kind or apiVersion fails),
// applies generators, patches (a minimal strategic merge: maps merge, lists
// of containers, env and volumes merge by name, other lists in a patch are
// refused) and image overrides, and then checks the result:
//
//   - workload selectors match their pod template labels; the Service, the
//     PodDisruptionBudget and the topology spread constraints select the
//     channelsd pods; a StatefulSet's headless Service exists;
//   - every named port a Service or probe refers to exists on the container,
//     and CHANNELS_ADDR listens on the container port;
//   - the probe paths are ones a node serves with 200 (an in-process node
//     from package node is asked);
//   - every CHANNELS_* variable the manifests set (ConfigMap and Secret keys,
//     env entries, the keys of the documented `kubectl create secret`) is one
//     the binary reads, per `channelsd --help`, except those in the test's
//     pending list, which must still be unread;
//   - terminationGracePeriodSeconds exceeds the drain window plus the
//     shutdown timeout; the preStop hook runs the image's entrypoint
//     (Dockerfile) with `drain`;
//   - the HorizontalPodAutoscaler targets the Deployment, which leaves
//     replicas to it; security context, resources, POD_NAME;
//   - the base holds no Secret; an overlay either generates the Secret or
//     documents the command that creates it; no kustomization commits a
//     value for CHANNELS_API_KEY or the token secrets;
//   - the dev overlay's Service is ClusterIP (reached by port-forward).
package k8s
