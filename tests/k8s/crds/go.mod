// Pins the releases whose CRDs the exposure tests install into the test API server: Gateway API
// (config/crd/standard/) and KEDA (config/crd/bases/). No code is built: `go mod download` fetches the
// module zips into the shared cache (tests/k8s/third_party_crds.py).
module orpheus-tts/tests/k8s/crds

go 1.26.0

require (
	github.com/kedacore/keda/v2 v2.21.0
	sigs.k8s.io/gateway-api v1.6.3
)
