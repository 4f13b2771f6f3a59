// VS Code, OpenCode and the browser are served by the sandbox's own hosts
// (sandbox-{id}, opencode-{id}, browser-{id}), framed here or opened in a
// window of their own. Their login is the host's own cookie (the edge's
// /auth/edge hand-off): the dashboard's session never reaches them.
export function ToolFrame({ title, url }: { title: string; url?: string }) {
  if (!url) return <p className="notice">{title} has no address yet: the sandbox has not run.</p>;
  return (
    <div className="tool">
      <div className="tool-bar">
        <strong>{title}</strong>
        <a className="btn btn-sm" href={url} target="_blank" rel="noopener noreferrer">
          Open {title} in a new window
        </a>
      </div>
      <iframe className="tool-frame" title={title} src={url} allow="clipboard-read; clipboard-write" referrerPolicy="no-referrer" />
    </div>
  );
}
