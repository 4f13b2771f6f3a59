// GET /api/images and DELETE /api/images/{id}, typed from the manager's
// OpenAPI document (make web regenerates the types).
import { api, type Schemas, unwrap } from './client';

export type ImageInfo = Schemas['ImageView'];
export type ImageService = Schemas['ImageServiceView'];
export type ImageBuild = Schemas['ImageBuildView'];

/** The host's images, by id. */
export async function listImages(): Promise<ImageInfo[]> {
  return (await listCatalog()).images;
}

/** The host's images and the image builds running now. */
export async function listCatalog(): Promise<{ images: ImageInfo[]; builds: ImageBuild[] }> {
  const r = await unwrap(api.GET('/api/images'));
  return { images: r.images ?? [], builds: r.builds ?? [] };
}

/** Removes an image (admins only; 409 while sandboxes use it). */
export async function removeImage(id: string): Promise<void> {
  await unwrap(api.DELETE('/api/images/{id}', { params: { path: { id } } }));
}
