// Package images holds the image recipes as data: one directory per image
// (recipe.json and the files it names) and versions.json, the one place
// every npm-installed version is pinned. They are embedded so an installed
// atelier binary builds its images without the source tree.
package images

import "embed"

// Each recipe directory is named here (a new recipe adds its own): not
// the whole directory, where make test-image writes images/test.ext4.
//
//go:embed versions.json dev-base dev-cloud
var FS embed.FS
