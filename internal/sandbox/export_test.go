package sandbox

import "atelier/internal/store"

// SetAfterInsert installs a hook Create calls right after inserting the row.
func (s *Service) SetAfterInsert(f func(id string)) { s.afterInsert = f }

// SetJournalRetention replaces JournalRetention for this service.
func (s *Service) SetJournalRetention(r store.OpRetention) { s.retention = &r }
