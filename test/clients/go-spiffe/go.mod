module spire-csi-driver.local/test/clients/go-spiffe

go 1.26.0

require github.com/spiffe/go-spiffe/v2 v2.8.1
