package store

import (
	"context"
	"fmt"
)

// LatestEventID returns the largest stored event ID, 0 when there is none. A
// client that reads it before a listing and then resumes the event stream
// after it misses no change made after the listing.
func (s *Store) LatestEventID(ctx context.Context) (int64, error) {
	var id int64
	if err := s.r.QueryRowContext(ctx, `SELECT coalesce(max(id), 0) FROM events`).Scan(&id); err != nil {
		return 0, fmt.Errorf("latest event id: %w", err)
	}
	return id, nil
}
