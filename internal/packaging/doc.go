// Package packaging holds no code: its tests keep the Dockerfile, the
// Kubernetes manifests and the compose file from rotting, as no Docker
// engine or cluster runs where the tests do.
package packaging
