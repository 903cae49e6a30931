// Builds the Pod sandbox ("pause") program that scripts/kube-up puts into a local image.
module clonepool.local/kube-build/pause

go 1.24.0
