// herald.d.ts — TypeScript declarations for herald.js, the Herald browser/Node client.
// Served by every node at /client/herald.d.ts. Documentation: docs/client-js.md.

/** A position in a history topic's stream: an offset means something only with its epoch. */
export interface Position {
  offset: number;
  epoch: string;
}

/** Reconnect backoff: delay = random(0, min(maxDelayMs, initialDelayMs * factor^attempt)). */
export interface ReconnectOptions {
  /** Ceiling of the first retry's delay (the delay itself is random below it). Default 500. */
  initialDelayMs?: number;
  /** Cap of the ceiling. Default 20000. */
  maxDelayMs?: number;
  /** Growth of the ceiling per attempt. Default 2. */
  factor?: number;
  /** A connection that got its welcome and stayed up this long resets the attempt count. Default 5000. */
  resetAfterMs?: number;
}

/** Liveness tuning (the node's JSON pings decide liveness). */
export interface LivenessOptions {
  /** Added to 2 ping intervals before a silent connection counts as dead. Default 1000. */
  slackMs?: number;
  /** After sleep or a return to the page: how long the `ping` probe waits for any frame. Default 3000. */
  probeTimeoutMs?: number;
  /** A check timer firing this much later than scheduled means the page slept: probe, don't kill. Default 2000. */
  lateTimerMs?: number;
}

/** A WebSocket constructor: the browser's, or the `ws` package's in Node. */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: any) => any) | null;
  onmessage: ((ev: { data: any }) => any) | null;
  onclose: ((ev: { code?: number; reason?: string }) => any) | null;
  onerror: ((ev: any) => any) | null;
}
export type WebSocketConstructor = new (url: string) => WebSocketLike;

export interface HeraldOptions {
  /** A static JWT, sent as `{"op":"auth"}` first on every connection. */
  token?: string;
  /** Called on every (re)connect and on `token_expired`; its token is used for auth and refresh. */
  getToken?: () => string | Promise<string>;
  /** WebSocket constructor. Default `globalThis.WebSocket`; in Node 18/20 pass `ws`'s. */
  WebSocket?: WebSocketConstructor;
  /** Backoff settings, or `false` for no reconnect (a drop closes the client). */
  reconnect?: ReconnectOptions | false;
  /** Publishes made while disconnected wait here, at most this many; 0 = reject at once ("disconnected"). Default 100. */
  offlineQueue?: number;
  /** Pace of sending queued publishes after a reconnect. Default 50. */
  publishRatePerSecond?: number;
  /** How long a publish waits for its ack before rejecting with "timeout". Default 10000. */
  ackTimeoutMs?: number;
  /** With getToken: refresh this long before the token's `exp` if the node's notice did not come. Default 10000. */
  refreshBeforeExpiryMs?: number;
  /** Liveness tuning. */
  liveness?: LivenessOptions;
}

export type HeraldState = "connecting" | "connected" | "reconnecting" | "closed";

/** Codes the node sends plus the client's own. */
export type HeraldErrorCode =
  | "forbidden" | "rate_limited" | "relay_unavailable" | "unauthorized" | "token_expired"
  | "invalid_topic" | "invalid_field" | "missing_field" | "too_many_subscriptions"
  | "recovery_overflow" | "recovery_lost"
  | "disconnected" | "timeout" | "closed" | "connection_lost" | "unsubscribed"
  | "invalid_url" | "invalid_frame" | "no_websocket"
  | (string & {});

/** An error from the node (`code` is the node's error code) or from the client. */
export class HeraldError extends Error {
  constructor(code: string, message?: string, extra?: object);
  readonly name: "HeraldError";
  /** The node's error code, or a client code: disconnected, timeout, closed, connection_lost. */
  readonly code: HeraldErrorCode;
  /** The topic concerned, when there is one (refused or dropped subscriptions, recovery errors). */
  readonly topic?: string;
}

/** Delivery metadata of one message. */
export interface MessageMeta {
  topic: string;
  /** History topics only. */
  offset?: number;
  /** History topics only. */
  epoch?: string;
  /** "base64" when a raw client published binary data (then `data` is a base64 string). */
  encoding?: "base64";
}

export interface SubscribeOptions {
  /** Resume after this position (the last message you already have). */
  since?: Position;
}

export interface Subscription {
  readonly topic: string;
  /** Resolves on the subscribe ack; rejects with a HeraldError ("forbidden", "relay_unavailable", "closed", ...). */
  readonly ready: Promise<void>;
  /** Removes this handler; the node is told when the topic's last handler goes. */
  unsubscribe(): void;
}

export interface PublishResult {
  /** The message's offset (history topics; otherwise undefined). */
  offset: number | undefined;
  /** The stream's epoch (history topics; otherwise undefined). */
  epoch: string | undefined;
}

export interface HeraldEvents {
  connected: { node: string; connection: string };
  disconnected: { code: number; reason: string };
  reconnecting: { attempt: number; delayMs: number };
  error: HeraldError | Error;
  /** History could not recover messages for a topic: refetch its state from the source of truth. */
  lost: { topic: string; reason: "not_recovered" | "recovery_lost" };
}

export class Herald {
  /**
   * @param url the node's base URL (`ws://host:8080`, `/ws` is added) or a full URL with a path;
   *   http(s) is mapped to ws(s); `?heartbeat=json` is always added.
   */
  constructor(url: string, options?: HeraldOptions);
  /** The URL the client connects to. */
  readonly url: string;
  readonly state: HeraldState;
  /** Subscribes a handler; several handlers on one topic share one subscription on the node. */
  subscribe(topic: string, onMessage: (data: any, meta: MessageMeta) => void, options?: SubscribeOptions): Subscription;
  /**
   * Publishes `data` (any JSON value). Resolves on the ack; rejects with the node's code, "timeout",
   * "disconnected" (offline queue full or disabled), "connection_lost" (the socket dropped after it was sent:
   * it may or may not have been published) or "closed".
   */
  publish(topic: string, data: unknown): Promise<PublishResult>;
  /** Adds a listener; returns a function that removes it. */
  on<E extends keyof HeraldEvents>(event: E, fn: (payload: HeraldEvents[E]) => void): () => void;
  off<E extends keyof HeraldEvents>(event: E, fn: (payload: HeraldEvents[E]) => void): void;
  /** Closes for good: no reconnect; pending publishes and subscriptions reject with "closed". */
  close(): void;
}

/** The /ws URL the client would connect to for `url`. */
export function buildUrl(url: string): string;
/** A JWT's `exp` claim (seconds), read without verification; undefined if unreadable. */
export function jwtExpiry(token: string): number | undefined;
