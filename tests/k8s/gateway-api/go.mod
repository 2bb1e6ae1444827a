// Pins the Gateway API release whose CRDs (config/crd/standard/ in the module) the exposure tests install
// into the test API server. No code is built from it: `go mod download` fetches the module into the cache.
module orpheus-tts/tests/k8s/gateway-api

go 1.26.0

require sigs.k8s.io/gateway-api v1.6.3
