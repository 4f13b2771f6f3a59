// Package images holds the image recipes as data: one directory per image
// (recipe.json and the files it names) and versions.json, the one place
// every npm-installed version is pinned. They are embedded so an installed
// atelier binary builds its images without the source tree.
package images

import "embed"

//go:embed versions.json */recipe.json dev-base/browser.sh
var FS embed.FS
