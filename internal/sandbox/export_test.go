package sandbox

// SetAfterInsert installs a hook Create calls right after inserting the row.
func (s *Service) SetAfterInsert(f func(id string)) { s.afterInsert = f }
