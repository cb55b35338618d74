// keygate console: the admin API in a page. Plain JavaScript, no framework,
// served from inside the binary. Everything shown is built with
// createElement and textContent, never parsed from a string as markup, and
// nothing runs inline: the page's Content-Security-Policy allows only this
// file.
//
// The bearer token lives in sessionStorage (this tab only) and goes out only
// in the Authorization header of same-origin fetches; it is never put in a
// URL. The location's hash names the view (#/orgs, #/org/ID, #/org/ID/audit,
// #/tokens) so the browser's back button works.
'use strict';

(function () {
  const TOKEN_KEY = 'keygate.token';
  const PAGE_SIZE = 50;
  const KEY_FORMAT = /^[A-Za-z0-9]{12}$/;

  const $ = (id) => {
    const el = document.getElementById(id);
    if (!el) throw new Error('console: no element #' + id);
    return el;
  };

  // Who is signed in: {name, role, org} from GET /v1/whoami.
  let me = null;
  // The key page on show: its KeyView, and whether the key is revealed.
  let current = null;
  let revealed = false;
  // Set when a change was refused: the provider's forms keep what was typed
  // instead of being filled again from the server's state.
  let keepTyped = false;
  // The org list: the `after` of each page shown before this one, and this
  // page's `after` and `next`.
  const list = { before: [], after: null, next: null, seq: 0 };

  // ------------------------------------------------------------------
  // The admin API
  // ------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  // What a refusal means, in words: the contract's codes first, then the
  // server's own message (already words), then the status.
  const WORDS = {
    UNAUTHENTICATED: 'This token is not accepted (it may have been deleted). Sign in again with a valid token.',
    FORBIDDEN: 'This token may not do that.',
    KEY_EXISTS: 'The organization already has a key. Delete it before adding a new one.',
    NO_KEY: 'The organization has no key now.',
    KEY_UNCHANGED: 'The server refused the new key: it must differ from the current key.',
    INVALID_KEY_FORMAT: 'The server refused the new key: it must be exactly 12 characters of A-Z, a-z and 0-9.',
    KEY_DISABLED: 'The key is disabled, so it cannot be changed. Contact your provider to re-enable it.',
    SUBSCRIPTION_EXPIRED: 'The subscription has expired, so the key cannot be changed. Contact your provider to renew it.',
    ORG_NOT_FOUND: 'There is no such organization (it may have been deleted).',
    ORG_EXISTS: 'An organization with this id exists already.',
    INVALID_ORG: 'An org id is 1 to 64 of a-z, 0-9 and -, starting with a letter or digit.',
    TOKEN_EXISTS: 'A token with this name exists already.',
    TOKEN_NOT_FOUND: 'There is no such token (it may have been deleted).',
    INVALID_TOKEN_NAME: 'That token name is not allowed.',
    CLUSTER_UNAVAILABLE: 'This keygate node cannot reach its cluster right now. Try again in a few seconds.',
    NOT_READY: 'This keygate node is not serving right now. Try again in a few seconds.',
    PAYLOAD_TOO_LARGE: 'That is too much to send at once.',
    INTERNAL: 'keygate could not do that because of an internal error. Try again; if it persists, tell the operator.',
  };

  function words(status, code, message) {
    if (WORDS[code]) return WORDS[code];
    if (message) return sentence(message);
    if (status >= 500) return 'keygate could not do that (status ' + status + '). Try again.';
    return 'keygate refused that (status ' + status + ').';
  }

  // The server's message as a sentence; one that starts by naming a field
  // (`rate_per_sec: ...`) keeps the field's name as it is.
  function sentence(text) {
    const s = /^[a-z_]+:/.test(text) ? text : text.charAt(0).toUpperCase() + text.slice(1);
    return /[.!?]$/.test(s) ? s : s + '.';
  }

  // What to tell the user about a failure: the API's refusal in words, or,
  // for a fault of the console itself, a plain sentence (the details go to
  // the browser's console).
  function reason(e) {
    if (e instanceof ApiError) return e.message;
    console.error(e);
    return 'The console hit an unexpected problem. Reload the page and try again.';
  }

  async function api(method, path, body) {
    const token = sessionStorage.getItem(TOKEN_KEY) || '';
    const init = {
      method: method,
      headers: { Authorization: 'Bearer ' + token },
      cache: 'no-store',
      credentials: 'omit',
      redirect: 'error',
    };
    if (body !== undefined) {
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let res;
    try {
      res = await fetch(path, init);
    } catch (e) {
      throw new ApiError(0, 'NETWORK', 'keygate could not be reached. Check the connection and try again.');
    }
    if (res.status === 204) return null;
    let data = null;
    try {
      data = await res.json();
    } catch (e) {
      data = null;
    }
    if (!res.ok) {
      const code = data && typeof data.code === 'string' ? data.code : '';
      const message = data && typeof data.message === 'string' ? data.message : '';
      const err = new ApiError(res.status, code, words(res.status, code, message));
      if (res.status === 401) signOut(err.message);
      throw err;
    }
    if (data === null) throw new ApiError(res.status, 'BAD_ANSWER', 'keygate sent an answer the console cannot read.');
    return data;
  }

  const orgPath = (org) => '/v1/orgs/' + encodeURIComponent(org);

  // ------------------------------------------------------------------
  // Small helpers
  // ------------------------------------------------------------------

  // RFC 3339 as "2027-01-15 08:00:00 UTC": the same for every reader,
  // whatever their locale and time zone.
  function when(rfc3339) {
    if (!rfc3339) return '';
    const d = new Date(rfc3339);
    if (Number.isNaN(d.getTime())) return rfc3339;
    return d.toISOString().replace('T', ' ').replace(/\.\d+Z$/, ' UTC');
  }

  // A datetime-local value, read as UTC, as RFC 3339.
  function fromLocalInput(value) {
    if (!value) return null;
    const withSeconds = value.length === 16 ? value + ':00' : value;
    return withSeconds + 'Z';
  }

  function toLocalInput(rfc3339) {
    if (!rfc3339) return '';
    const d = new Date(rfc3339);
    if (Number.isNaN(d.getTime())) return '';
    return d.toISOString().slice(0, 19);
  }

  const number = (n) => Number(n).toLocaleString('en-US');

  // As the API masks keys for viewers: all but the last 4 characters are `*`.
  function masked(key) {
    if (key.length <= 4) return '*'.repeat(key.length);
    return '*'.repeat(key.length - 4) + key.slice(-4);
  }

  function el(tag, text, attrs) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = text;
    if (attrs) for (const name of Object.keys(attrs)) e.setAttribute(name, attrs[name]);
    return e;
  }

  function cell(label, content) {
    const td = el('td', null, { 'data-label': label });
    if (content instanceof Node) td.append(content);
    else td.textContent = content;
    return td;
  }

  function say(id, text) {
    $(id).textContent = text || '';
  }

  async function copy(text, statusId) {
    try {
      if (!navigator.clipboard) throw new Error('no clipboard');
      await navigator.clipboard.writeText(text);
      say(statusId, 'Copied to the clipboard.');
      return;
    } catch (e) {
      // Plain HTTP on another host has no Clipboard API: the old way.
    }
    const area = el('textarea', null, { 'aria-hidden': 'true', readonly: '' });
    area.value = text;
    area.className = 'offscreen';
    document.body.append(area);
    area.select();
    let ok = false;
    try {
      ok = document.execCommand('copy');
    } catch (e) {
      ok = false;
    }
    area.remove();
    say(statusId, ok ? 'Copied to the clipboard.' : 'The browser did not allow copying; select the text and copy it by hand.');
  }

  // Runs `work` with `button` disabled, so a double click sends one call.
  async function busy(button, work) {
    button.disabled = true;
    try {
      return await work();
    } finally {
      button.disabled = false;
    }
  }

  // ------------------------------------------------------------------
  // Views and routing
  // ------------------------------------------------------------------

  const VIEWS = ['view-signin', 'view-orgs', 'view-org', 'view-tokens'];

  function show(view, title, focusId) {
    for (const id of VIEWS) $(id).hidden = id !== view;
    document.title = title + ' | keygate console';
    const nav = { 'view-orgs': 'nav-orgs', 'view-tokens': 'nav-tokens' }[view];
    for (const id of ['nav-orgs', 'nav-tokens']) {
      if (id === nav) $(id).setAttribute('aria-current', 'page');
      else $(id).removeAttribute('aria-current');
    }
    if (focusId) $(focusId).focus();
  }

  function home() {
    return me.role === 'provider' ? '#/orgs' : '#/org/' + me.org;
  }

  const ORG_HASH = /^#\/org\/([a-z0-9][a-z0-9-]{0,63})(\/audit)?$/;

  // The org whose page the location names, if it names one.
  function hashOrg() {
    const m = ORG_HASH.exec(location.hash || '');
    return m ? m[1] : null;
  }

  async function route() {
    if (!me) {
      showSignIn('');
      return;
    }
    const hash = location.hash || '';
    let m;
    if (me.role === 'provider' && hash === '#/orgs') {
      await openOrgs();
    } else if (me.role === 'provider' && hash === '#/tokens') {
      await openTokens();
    } else if ((m = ORG_HASH.exec(hash)) &&
               (me.role === 'provider' || m[1] === me.org)) {
      await openOrg(m[1], m[2] ? 'audit' : 'key');
    } else if (hash !== home()) {
      location.replace(home());
    } else {
      // The home hash itself did not match (cannot happen for a valid whoami).
      showSignIn('The console cannot show a page for this token.');
    }
  }

  // ------------------------------------------------------------------
  // Signing in and out
  // ------------------------------------------------------------------

  function showSignIn(message) {
    me = null;
    $('nav').hidden = true;
    $('signout').hidden = true;
    say('who', '');
    say('signin-error', message);
    show('view-signin', 'Sign in', 'signin-title');
  }

  function signOut(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    current = null;
    closeDialogs();
    showSignIn(message || '');
    $('signin-token').focus();
  }

  function closeDialogs() {
    for (const d of document.querySelectorAll('dialog')) if (d.open) d.close();
  }

  async function whoami() {
    me = await api('GET', '/v1/whoami');
    $('nav').hidden = me.role !== 'provider';
    $('signout').hidden = false;
    say('who', me.role === 'provider'
      ? 'Signed in as the provider'
      : 'Signed in as ' + me.name + ' (' + me.role + ' of ' + me.org + ')');
  }

  $('signin-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const input = $('signin-token');
    const token = input.value.trim();
    if (!token) {
      say('signin-error', 'Paste a token first.');
      input.focus();
      return;
    }
    say('signin-error', '');
    sessionStorage.setItem(TOKEN_KEY, token);
    try {
      await busy($('signin-submit'), whoami);
      input.value = '';
      if (location.hash === home()) await route();
      else location.hash = home();
    } catch (e) {
      if (e.status !== 401) sessionStorage.removeItem(TOKEN_KEY);
      showSignIn(e.status === 401 ? 'keygate does not know this token. Check it and try again.' : reason(e));
      input.focus();
    }
  });

  $('signout').addEventListener('click', () => {
    signOut('You are signed out.');
  });

  // ------------------------------------------------------------------
  // The org list (provider)
  // ------------------------------------------------------------------

  async function openOrgs() {
    show('view-orgs', 'Organizations', 'orgs-title');
    await loadOrgs();
  }

  async function loadOrgs() {
    const seq = ++list.seq;
    const params = new URLSearchParams({ limit: String(PAGE_SIZE) });
    if (list.after) params.set('after', list.after);
    const q = $('orgs-q').value.trim();
    if (q) params.set('q', q);
    const status = $('orgs-status').value;
    if (status) params.set('status', status);
    say('orgs-error', '');
    let page;
    try {
      page = await api('GET', '/v1/orgs?' + params.toString());
    } catch (e) {
      if (seq === list.seq) say('orgs-error', reason(e));
      return;
    }
    // A slower answer to an older search does not overwrite a newer one.
    if (seq !== list.seq) return;
    list.next = page.next;
    const body = $('orgs-body');
    body.replaceChildren();
    for (const v of page.orgs) {
      const tr = el('tr');
      tr.append(
        cell('Org', el('a', v.org, { href: '#/org/' + v.org })),
        cell('Status', v.status === 'disabled' ? 'Disabled' : 'Enabled'),
        cell('API key', v.key === null ? 'No key' : masked(v.key)),
        cell('Subscription', subscriptionText(v)),
        cell('Last modified', when(v.last_modified_on) + ' by ' + v.last_modified_by),
      );
      body.append(tr);
    }
    $('orgs-table').hidden = page.orgs.length === 0;
    $('orgs-empty').hidden = page.orgs.length !== 0;
    const n = list.before.length + 1;
    say('orgs-page', 'Page ' + n + (page.orgs.length ? ', ' + page.orgs.length + ' shown' : ''));
    const filtered = q || status ? ' matching the search' : '';
    say('orgs-caption', 'Organizations' + filtered + ', page ' + n);
    $('orgs-prev').disabled = list.before.length === 0;
    $('orgs-next').disabled = !page.next;
  }

  function restartList() {
    list.before = [];
    list.after = null;
    return loadOrgs();
  }

  let searchTimer = 0;
  $('orgs-q').addEventListener('input', () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(restartList, 250);
  });
  $('orgs-status').addEventListener('change', restartList);
  $('orgs-search').addEventListener('submit', (ev) => {
    ev.preventDefault();
    clearTimeout(searchTimer);
    restartList();
  });
  $('orgs-next').addEventListener('click', () => {
    if (!list.next) return;
    list.before.push(list.after);
    list.after = list.next;
    loadOrgs();
  });
  $('orgs-prev').addEventListener('click', () => {
    if (list.before.length === 0) return;
    list.after = list.before.pop();
    loadOrgs();
  });

  $('provision-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const org = $('provision-org').value.trim();
    say('provision-error', '');
    say('orgs-message', '');
    if (!/^[a-z0-9][a-z0-9-]{0,63}$/.test(org)) {
      say('provision-error', WORDS.INVALID_ORG);
      $('provision-org').setAttribute('aria-invalid', 'true');
      $('provision-org').focus();
      return;
    }
    $('provision-org').removeAttribute('aria-invalid');
    const body = { org: org };
    const expiry = fromLocalInput($('provision-expiry').value);
    if (expiry) body.subscription_expires_at = expiry;
    try {
      await busy($('provision-submit'), () => api('POST', '/v1/orgs', body));
      $('provision-org').value = '';
      $('provision-expiry').value = '';
      location.hash = '#/org/' + org;
    } catch (e) {
      say('provision-error', reason(e));
    }
  });

  // ------------------------------------------------------------------
  // One org's key page
  // ------------------------------------------------------------------

  function subscriptionText(v) {
    if (!v.subscription_expires_at) return 'No expiry';
    if (v.subscription_expired) return 'Expired on ' + when(v.subscription_expires_at);
    return 'Active until ' + when(v.subscription_expires_at);
  }

  async function openOrg(org, tab) {
    const changed = !current || current.org !== org;
    if (changed) {
      revealed = false;
      say('org-message', '');
      say('copy-status', '');
    }
    say('org-error', '');
    $('org-back').hidden = me.role !== 'provider';
    selectTab(tab, false);
    show('view-org', 'API key of ' + org, changed ? 'org-title' : null);
    say('org-name', org);
    await reloadOrg(org);
  }

  // Reads the server's state of the org and shows it: after opening the
  // page and after every change, whether it worked or not.
  async function reloadOrg(org) {
    org = org || (current && current.org);
    if (!org) return;
    try {
      const [view, usage] = await Promise.all([
        api('GET', orgPath(org) + '/key'),
        api('GET', orgPath(org) + '/usage'),
      ]);
      // The user may have gone elsewhere while this was on its way.
      if (hashOrg() !== org) return;
      current = view;
      renderOrg(view, usage);
      if (!$('panel-audit').hidden) await loadAudit(org);
    } catch (e) {
      if (e.code === 'ORG_NOT_FOUND' && me && me.role === 'provider') {
        location.hash = '#/orgs';
        say('orgs-message', 'The organization ' + org + ' no longer exists.');
        return;
      }
      say('org-error', reason(e));
    }
  }

  function renderOrg(v, usage) {
    const isViewer = me.role === 'viewer';
    const canChange = me.role === 'admin' || me.role === 'provider';
    const disabled = v.status === 'disabled';
    const expired = v.subscription_expired;

    say('base-url', v.base_url);

    const hasKey = v.key !== null;
    $('key-value').hidden = !hasKey;
    $('key-none').hidden = hasKey;
    $('key-tools').hidden = !hasKey || isViewer;
    if (hasKey) {
      // A viewer's key comes masked from the API; the others' is masked here
      // until revealed.
      const shown = isViewer || !revealed ? (isViewer ? v.key : masked(v.key)) : v.key;
      say('key-value', shown);
      $('reveal-key').textContent = revealed ? 'Hide' : 'Reveal';
      $('reveal-key').setAttribute('aria-pressed', String(revealed));
      $('reveal-key').setAttribute('aria-label', revealed ? 'Hide the API key' : 'Reveal the API key');
    }

    const badge = $('status-value');
    badge.textContent = disabled ? 'Disabled' : 'Enabled';
    badge.className = 'badge ' + (disabled ? 'disabled' : 'enabled');
    say('status-reason', disabled && v.disabled_reason ? 'Reason: ' + v.disabled_reason : '');

    // The provider is the one to contact: it is told where to act instead.
    const isProvider = me.role === 'provider';
    $('notice-disabled').hidden = !disabled;
    say('notice-disabled', disabled
      ? 'This key is disabled' + (v.disabled_reason ? ' (' + v.disabled_reason + ')' : '') +
        '. Calls with it are refused, and it cannot be added, edited, regenerated or deleted. ' +
        (isProvider ? 'Enable it under Provider controls below.' : 'Contact your provider to re-enable it.')
      : '');
    $('notice-expired').hidden = !expired;
    say('notice-expired', expired
      ? 'The subscription expired on ' + when(v.subscription_expires_at) +
        '. This page is read-only: the key cannot be added, edited, regenerated or deleted ' +
        'until the subscription is renewed. ' +
        (isProvider ? 'Set a later end, or No end, under Provider controls below.' : 'Contact your provider to renew it.')
      : '');

    say('subscription-value', subscriptionText(v));
    say('modified-by', v.last_modified_by);
    say('modified-on', when(v.last_modified_on));

    const changes = canChange && !disabled && !expired;
    $('key-actions').hidden = !changes;
    $('add-key').hidden = hasKey;
    $('edit-key').hidden = !hasKey;
    $('regenerate-key').hidden = !hasKey;
    $('delete-key').hidden = !hasKey;

    renderUsage(usage);

    const provider = me.role === 'provider';
    $('provider-panel').hidden = !provider;
    if (provider) {
      $('disable-form').hidden = disabled;
      $('enable-box').hidden = !disabled;
    }
    if (provider && !keepTyped) {
      $('subscription-at').value = toLocalInput(v.subscription_expires_at);
      if (v.limits) {
        $('limit-rate').value = v.limits.rate_per_sec;
        $('limit-burst').value = v.limits.burst;
        $('limit-threshold').value = v.limits.threshold_calls;
        $('limit-window').value = v.limits.threshold_window_secs;
      }
    }
  }

  function renderUsage(u) {
    const threshold = Math.max(1, Number(u.threshold_calls));
    const calls = Number(u.calls_in_window);
    const meter = $('usage-meter');
    meter.max = threshold;
    meter.high = Math.floor(threshold * 0.8);
    meter.low = Math.floor(threshold * 0.5);
    meter.optimum = 0;
    meter.value = Math.min(calls, threshold);
    const pct = Math.min(100, Math.floor((calls * 100) / threshold));
    const share = calls > 0 && pct === 0 ? 'under 1%' : pct + '%';
    const text = number(calls) + ' of ' + number(threshold) + ' calls in this window (' + share + ')';
    say('usage-text', text + '. Past the threshold the key is disabled until the provider enables it.');
    meter.setAttribute('aria-valuetext', text);
    const parts = [];
    if (u.window_ends_at) parts.push('The window ends ' + when(u.window_ends_at) + '.');
    else parts.push('No window is open: the next call opens one.');
    parts.push(u.last_used_at ? 'Last used ' + when(u.last_used_at) + '.' : 'Never used.');
    parts.push(number(u.rate_limited_in_window) + ' calls refused by the rate limit in this window.');
    say('usage-detail', parts.join(' '));
  }

  // --- the tabs -------------------------------------------------------

  function selectTab(tab, focus) {
    const audit = tab === 'audit';
    $('tab-key').setAttribute('aria-selected', String(!audit));
    $('tab-audit').setAttribute('aria-selected', String(audit));
    $('tab-key').tabIndex = audit ? -1 : 0;
    $('tab-audit').tabIndex = audit ? 0 : -1;
    $('panel-key').hidden = audit;
    $('panel-audit').hidden = !audit;
    if (focus) $(audit ? 'tab-audit' : 'tab-key').focus();
  }

  function goTab(tab) {
    if (!current) return;
    const hash = '#/org/' + current.org + (tab === 'audit' ? '/audit' : '');
    if (location.hash !== hash) location.hash = hash;
  }

  $('tab-key').addEventListener('click', () => goTab('key'));
  $('tab-audit').addEventListener('click', () => goTab('audit'));
  for (const id of ['tab-key', 'tab-audit']) {
    $(id).addEventListener('keydown', (ev) => {
      if (['ArrowLeft', 'ArrowRight', 'Home', 'End'].indexOf(ev.key) < 0) return;
      ev.preventDefault();
      const next = ev.key === 'Home' ? 'key' : ev.key === 'End' ? 'audit'
        : id === 'tab-key' ? 'audit' : 'key';
      selectTab(next, true);
      goTab(next);
    });
  }

  async function loadAudit(org) {
    const data = await api('GET', orgPath(org) + '/audit');
    const body = $('audit-body');
    body.replaceChildren();
    const events = data.events.slice().reverse();
    for (const e of events) {
      const tr = el('tr');
      tr.append(
        cell('At', when(e.at)),
        cell('Actor', e.actor),
        cell('Action', e.action.replace(/_/g, ' ')),
        cell('Detail', e.detail),
      );
      body.append(tr);
    }
    $('audit-table').hidden = events.length === 0;
    $('audit-empty').hidden = events.length !== 0;
  }

  // --- copy and reveal -------------------------------------------------

  $('copy-base-url').addEventListener('click', () => {
    if (current) copy(current.base_url, 'copy-status');
  });
  $('copy-key').addEventListener('click', () => {
    if (current && current.key) copy(current.key, 'copy-status');
  });
  $('reveal-key').addEventListener('click', () => {
    if (!current || !current.key) return;
    revealed = !revealed;
    say('key-value', revealed ? current.key : masked(current.key));
    $('reveal-key').textContent = revealed ? 'Hide' : 'Reveal';
    $('reveal-key').setAttribute('aria-pressed', String(revealed));
    $('reveal-key').setAttribute('aria-label', revealed ? 'Hide the API key' : 'Reveal the API key');
  });

  // --- the key's changes ---------------------------------------------

  // Runs one change, says how it went, and shows the server's state after it.
  async function change(button, done, work) {
    const org = current.org;
    say('org-message', '');
    say('org-error', '');
    try {
      await busy(button, work);
      say('org-message', done);
    } catch (e) {
      say('org-error', reason(e));
      keepTyped = true;
    }
    await reloadOrg(org);
    keepTyped = false;
  }

  $('add-key').addEventListener('click', (ev) => {
    change(ev.currentTarget, 'A new key was added. It works at once.',
      () => api('POST', orgPath(current.org) + '/key'));
  });

  $('regenerate-key').addEventListener('click', async (ev) => {
    const button = ev.currentTarget;
    const ok = await confirmDialog('Regenerate the API key?',
      'keygate makes a new random key, and the current key stops working at once.', 'Regenerate');
    if (ok) {
      revealed = false;
      await change(button, 'The key was regenerated. The old key no longer works.',
        () => api('POST', orgPath(current.org) + '/key/regenerate'));
    }
  });

  $('delete-key').addEventListener('click', async (ev) => {
    const button = ev.currentTarget;
    const ok = await confirmDialog('Delete the API key?',
      'The key stops working at once, and the organization has no key until one is added.', 'Delete');
    if (ok) {
      revealed = false;
      await change(button, 'The key was deleted.', () => api('DELETE', orgPath(current.org) + '/key'));
    }
  });

  // --- the Edit dialog -------------------------------------------------

  // What is wrong with `value` as the new key, in words, or '' if nothing.
  function keyProblem(value, currentKey) {
    if (value.length === 0) return 'Type the new key.';
    const bad = Array.from(new Set(value.replace(/[A-Za-z0-9]/g, '').split(''))).join(' ');
    if (bad) return 'Only A-Z, a-z and 0-9 are allowed; remove ' + (bad.trim() ? bad : 'the spaces') + '.';
    if (value.length !== 12) {
      return 'The key has ' + value.length + ' character' + (value.length === 1 ? '' : 's') +
        '; it needs exactly 12.';
    }
    if (value === currentKey) return 'The new key must differ from the current key.';
    return '';
  }

  function checkEdit() {
    const value = $('edit-input').value;
    const currentKey = current ? current.key : null;
    const problem = keyProblem(value, currentKey);
    const formatOk = KEY_FORMAT.test(value);
    const differs = value.length > 0 && value !== currentKey;
    $('rule-format').className = value ? (formatOk ? 'met' : 'unmet') : '';
    $('rule-differs').className = value ? (differs ? 'met' : 'unmet') : '';
    say('edit-problem', value ? problem : '');
    $('edit-input').setAttribute('aria-invalid', String(Boolean(value) && Boolean(problem)));
    $('edit-confirm').disabled = Boolean(problem);
    return problem;
  }

  $('edit-key').addEventListener('click', () => {
    $('edit-input').value = '';
    say('edit-error', '');
    checkEdit();
    $('edit-dialog').showModal();
    $('edit-input').focus();
  });
  $('edit-input').addEventListener('input', () => {
    say('edit-error', '');
    checkEdit();
  });
  $('edit-cancel').addEventListener('click', () => $('edit-dialog').close());
  $('edit-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    if (checkEdit()) return;
    const org = current.org;
    const key = $('edit-input').value;
    say('edit-error', '');
    say('org-message', '');
    say('org-error', '');
    try {
      await busy($('edit-confirm'), () => api('PUT', orgPath(org) + '/key', { key: key }));
      $('edit-dialog').close();
      revealed = false;
      say('org-message', 'The key was changed. The old key no longer works.');
      await reloadOrg(org);
    } catch (e) {
      // The dialog stays open with the server's reason; the page behind it
      // shows the server's state.
      say('edit-error', reason(e));
      await reloadOrg(org);
      if ($('edit-dialog').open && $('key-actions').hidden) {
        // The key can no longer be changed at all (disabled or expired).
        $('edit-confirm').disabled = true;
      }
    }
  });

  // --- the confirmation dialog ---------------------------------------

  // Focus stays inside an open dialog: showModal() makes the page behind it
  // inert, and Tab past either end comes round to the other end.
  function focusables(dialog) {
    return Array.from(dialog.querySelectorAll('button, input, select, textarea, a[href]'))
      .filter((e) => !e.disabled && e.checkVisibility());
  }

  for (const dialog of document.querySelectorAll('dialog')) {
    dialog.addEventListener('keydown', (ev) => {
      if (ev.key !== 'Tab') return;
      const all = focusables(dialog);
      if (all.length === 0) return;
      const first = all[0];
      const last = all[all.length - 1];
      const inside = dialog.contains(document.activeElement);
      if (ev.shiftKey && (document.activeElement === first || !inside)) {
        ev.preventDefault();
        last.focus();
      } else if (!ev.shiftKey && (document.activeElement === last || !inside)) {
        ev.preventDefault();
        first.focus();
      }
    });
  }

  let confirmResolve = null;

  function confirmDialog(title, text, okLabel) {
    say('confirm-title', title);
    say('confirm-text', text);
    say('confirm-ok', okLabel);
    const dialog = $('confirm-dialog');
    return new Promise((resolve) => {
      confirmResolve = resolve;
      dialog.showModal();
      // The safe choice has the focus.
      $('confirm-cancel').focus();
    });
  }

  function settleConfirm(answer) {
    const resolve = confirmResolve;
    confirmResolve = null;
    if (resolve) resolve(answer);
  }

  $('confirm-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    $('confirm-dialog').close();
    settleConfirm(true);
  });
  $('confirm-cancel').addEventListener('click', () => {
    $('confirm-dialog').close();
    settleConfirm(false);
  });
  // Escape closes a dialog without a choice: that is a no.
  $('confirm-dialog').addEventListener('close', () => settleConfirm(false));

  // --- the provider's controls ---------------------------------------

  $('disable-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const reason = $('disable-reason').value.trim();
    say('disable-error', '');
    if (!reason) {
      say('disable-error', 'Give a reason: the organization sees it on its key page.');
      $('disable-reason').focus();
      return;
    }
    await change($('disable-submit'), 'The key was disabled.',
      () => api('POST', orgPath(current.org) + '/disable', { reason: reason }));
    $('disable-reason').value = '';
  });

  $('enable-key').addEventListener('click', (ev) => {
    change(ev.currentTarget, 'The key was enabled; its threshold count starts afresh.',
      () => api('POST', orgPath(current.org) + '/enable'));
  });

  $('subscription-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    say('subscription-error', '');
    const at = fromLocalInput($('subscription-at').value);
    if (!at) {
      say('subscription-error', 'Pick a date and time, or choose No end.');
      return;
    }
    await change($('subscription-save'), 'The subscription now ends ' + when(at) + '.',
      () => api('PUT', orgPath(current.org) + '/subscription', { expires_at: at }));
  });

  $('subscription-clear').addEventListener('click', (ev) => {
    change(ev.currentTarget, 'The subscription now has no end.',
      () => api('PUT', orgPath(current.org) + '/subscription', { expires_at: null }));
  });

  $('limits-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    say('limits-error', '');
    const fields = [
      ['limit-rate', 'rate_per_sec'],
      ['limit-burst', 'burst'],
      ['limit-threshold', 'threshold_calls'],
      ['limit-window', 'threshold_window_secs'],
    ];
    const body = {};
    for (const [id, name] of fields) {
      const raw = $(id).value.trim();
      if (!raw) continue;
      if (!/^\d+$/.test(raw)) {
        say('limits-error', 'Each limit is a whole number of at least 1.');
        $(id).focus();
        return;
      }
      body[name] = Number(raw);
    }
    await change($('limits-save'), 'The limits were saved.',
      () => api('PUT', orgPath(current.org) + '/limits', body));
  });

  $('delete-org').addEventListener('click', async (ev) => {
    const button = ev.currentTarget;
    const org = current.org;
    const ok = await confirmDialog('Delete the organization ' + org + '?',
      'Its key and its tokens are removed at once; calls with its key are refused. Its audit log stays.',
      'Delete organization');
    if (!ok) return;
    say('org-error', '');
    try {
      await busy(button, () => api('DELETE', orgPath(org)));
      current = null;
      location.hash = '#/orgs';
      say('orgs-message', 'The organization ' + org + ' was deleted.');
    } catch (e) {
      say('org-error', reason(e));
      await reloadOrg(org);
    }
  });

  // ------------------------------------------------------------------
  // Tokens (provider)
  // ------------------------------------------------------------------

  async function openTokens() {
    show('view-tokens', 'Tokens', 'tokens-title');
    await loadTokens();
  }

  async function loadTokens() {
    say('tokens-error', '');
    let data;
    try {
      data = await api('GET', '/v1/tokens');
    } catch (e) {
      say('tokens-error', reason(e));
      return;
    }
    const body = $('tokens-body');
    body.replaceChildren();
    for (const t of data.tokens) {
      const del = el('button', 'Delete', { type: 'button', class: 'small danger', 'aria-label': 'Delete the token ' + t.name });
      del.addEventListener('click', () => deleteToken(t.name, del));
      const tr = el('tr');
      tr.append(
        cell('Name', t.name),
        cell('Role', t.role),
        cell('Org', t.org),
        cell('Created', when(t.created_at)),
        cell('', del),
      );
      body.append(tr);
    }
    $('tokens-table').hidden = data.tokens.length === 0;
    $('tokens-empty').hidden = data.tokens.length !== 0;
  }

  async function deleteToken(name, button) {
    const ok = await confirmDialog('Delete the token ' + name + '?',
      'Whoever holds it is refused from now on.', 'Delete token');
    if (!ok) return;
    say('tokens-message', '');
    say('tokens-error', '');
    try {
      await busy(button, () => api('DELETE', '/v1/tokens/' + encodeURIComponent(name)));
      say('tokens-message', 'The token ' + name + ' was deleted.');
    } catch (e) {
      say('tokens-error', reason(e));
    }
    await loadTokens();
    $('tokens-title').focus();
  }

  $('token-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    say('token-form-error', '');
    say('tokens-message', '');
    const name = $('token-name').value.trim();
    const org = $('token-org').value.trim();
    if (!name || !org) {
      say('token-form-error', 'Give the token a name and the org id it is for.');
      $(name ? 'token-org' : 'token-name').focus();
      return;
    }
    try {
      const made = await busy($('token-create'), () => api('POST', '/v1/tokens',
        { name: name, role: $('token-role').value, org: org }));
      $('token-name').value = '';
      say('token-created-value', made.token);
      say('token-copy-status', '');
      $('token-created').hidden = false;
      $('token-created-title').focus();
    } catch (e) {
      say('token-form-error', reason(e));
    }
    await loadTokens();
  });

  $('token-created-copy').addEventListener('click', () => {
    copy($('token-created-value').textContent, 'token-copy-status');
  });
  $('token-created-done').addEventListener('click', () => {
    // Gone from the page too: it is shown this once.
    say('token-created-value', '');
    $('token-created').hidden = true;
    $('token-name').focus();
  });

  // ------------------------------------------------------------------
  // Start
  // ------------------------------------------------------------------

  // The hash names views, so the skip link moves the focus itself.
  $('skip').addEventListener('click', (ev) => {
    ev.preventDefault();
    $('main').focus();
  });

  // Coming back to the tab shows the server's state as it is now: the
  // provider may have changed it meanwhile.
  document.addEventListener('visibilitychange', () => {
    if (document.visibilityState === 'visible' && me && current && !$('view-org').hidden &&
        !document.querySelector('dialog[open]')) {
      reloadOrg(current.org);
    }
  });

  window.addEventListener('hashchange', () => {
    route();
  });

  async function start() {
    if (!sessionStorage.getItem(TOKEN_KEY)) {
      showSignIn('');
      return;
    }
    try {
      await whoami();
    } catch (e) {
      if (e.status !== 401) showSignIn(reason(e));
      return;
    }
    if (location.hash === '' || location.hash === '#' || location.hash === '#/') location.replace(home());
    else await route();
  }

  start();
})();
