// GET /api/images, hand-typed until the manager's OpenAPI document lists it
// (another change adds the route). A 404 means this manager has no image
// listing yet: the page shows an empty state rather than an error.
import { ApiError, request } from './client';

export interface ImageInfo {
  id: string;
  sizeBytes: number;
  createdAt: string;
  versions: Record<string, string>;
  usedBy: string[] | null;
  building?: { stage: string; startedAt: string } | null;
}

/** The images, or null when the manager does not serve the listing. */
export async function listImages(): Promise<ImageInfo[] | null> {
  try {
    const r = await request<{ images: ImageInfo[] | null }>('GET', '/api/images');
    return r.images ?? [];
  } catch (e) {
    if (e instanceof ApiError && e.status === 404) return null;
    throw e;
  }
}
