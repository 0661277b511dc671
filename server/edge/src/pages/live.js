// The live listing: keeps the rows of `GET /kv` (HTML) current from the
// change feed, without a reload. Served by the program itself at
// /ui/live.js; the pages' CSP allows no other script.
//
// The listing was read at revision `data-rev`; the feed is opened from
// there, so no change in between is missed. An event is applied only if its
// revision is above the row's version (the listing may already show it). A
// `reset` (the feed's history no longer reaches our revision) reloads the
// page. The stream is closed while the tab is hidden, so that idle tabs do
// not hold the browser's six connections per host, and reopened from the
// last revision seen when it shows again.
(function () {
  'use strict';
  var table = document.getElementById('listing');
  if (!table || !table.dataset.rev || !window.EventSource) {
    return;
  }
  var tbody = table.tBodies[0];
  var data = table.dataset;
  var prefix = data.prefix || '';
  var folder = data.folder || '';
  var after = data.after; // undefined on the first page
  var paged = data.next !== undefined; // more pages follow this one
  var preview = parseInt(data.preview, 10) || 512;
  var rev = data.rev;
  var state = document.getElementById('live');
  var source = null;
  var retry = null;

  function say(text) {
    if (state) {
      state.textContent = text;
    }
  }

  function rowPath(row) {
    return row.dataset.key !== undefined ? row.dataset.key : row.dataset.path;
  }

  // As the server spells a key in a URL: every byte but unreserved ones
  // escaped, `/` kept between segments.
  function encodeKey(key) {
    return key.split('/').map(function (segment) {
      return encodeURIComponent(segment).replace(/[!'()*]/g, function (c) {
        return '%' + c.charCodeAt(0).toString(16).toUpperCase();
      });
    }).join('/');
  }

  function relative(path) {
    var rest = path.slice(folder.length);
    return path.indexOf(folder) === 0 && rest !== '' ? rest : path;
  }

  function utf8Length(text) {
    return new TextEncoder().encode(text).length;
  }

  function muted(text) {
    var span = document.createElement('span');
    span.className = 'muted';
    span.textContent = text;
    return span;
  }

  // What the value cell shows, as the server renders it: text cut at the
  // preview length, or the size and type of anything else.
  function valueCell(cell, event) {
    cell.textContent = '';
    var type = event.content_type || 'application/octet-stream';
    if (event.value_omitted) {
      cell.appendChild(muted('(' + event.size + ' bytes, ' + type + ')'));
      return;
    }
    if (event.value === undefined) {
      var size = event.value_base64 ? atob(event.value_base64).length : 0;
      cell.appendChild(muted('(' + size + ' bytes, ' + type + ')'));
      return;
    }
    var text = event.value;
    if (/[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f]/.test(text)) {
      cell.appendChild(muted('(' + utf8Length(text) + ' bytes, ' + type + ')'));
      return;
    }
    var bytes = utf8Length(text);
    if (bytes > preview) {
      cell.appendChild(document.createTextNode(text.slice(0, preview)));
      cell.appendChild(muted('… (' + bytes + ' bytes)'));
    } else {
      cell.textContent = text;
    }
  }

  function find(path) {
    for (var i = 0; i < tbody.rows.length; i++) {
      if (rowPath(tbody.rows[i]) === path) {
        return tbody.rows[i];
      }
    }
    return null;
  }

  // Whether a path belongs on this page: after its cursor, and before the
  // next page's first row when there is one.
  function onThisPage(path) {
    if (after !== undefined && path <= after) {
      return false;
    }
    if (paged && tbody.rows.length > 0 && path > rowPath(tbody.rows[tbody.rows.length - 1])) {
      return false;
    }
    return true;
  }

  function insert(row, path) {
    for (var i = 0; i < tbody.rows.length; i++) {
      if (rowPath(tbody.rows[i]) > path) {
        tbody.insertBefore(row, tbody.rows[i]);
        return;
      }
    }
    tbody.appendChild(row);
    var empty = document.getElementById('empty');
    if (empty) {
      empty.remove();
    }
  }

  function cell(row, className) {
    var td = row.insertCell();
    if (className) {
      td.className = className;
    }
    return td;
  }

  function flash(row) {
    row.classList.add('changed');
    setTimeout(function () {
      row.classList.remove('changed');
    }, 1500);
  }

  function counts() {
    var el = document.getElementById('counts-page');
    if (!el) {
      return;
    }
    var folders = tbody.querySelectorAll('tr.folder').length;
    var keys = tbody.querySelectorAll('tr.key').length;
    var plural = function (n, what) {
      return n === 1 ? '1 ' + what : n + ' ' + what + 's';
    };
    el.textContent = plural(folders, 'folder') + ' and ' + plural(keys, 'key') + ' on this page';
  }

  function apply(event) {
    var key = event.key;
    if (key === undefined || key.indexOf(prefix) !== 0) {
      return;
    }
    // The store's total was counted when the page loaded; an event does not
    // say whether a put created its key, so the total is no longer known.
    var total = document.getElementById('total');
    if (total) {
      total.remove();
    }
    var version = Number(event.rev);
    var rest = key.slice(folder.length);
    var slash = rest.indexOf('/');
    if (slash >= 0) {
      // A key in a subfolder: its folder row, if the folder is new here.
      var path = folder + rest.slice(0, slash + 1);
      if (event.type === 'put' && !find(path) && onThisPage(path)) {
        var f = document.createElement('tr');
        f.className = 'folder';
        f.dataset.path = path;
        var a = document.createElement('a');
        a.href = '/kv?prefix=' + encodeURIComponent(path);
        a.textContent = '📁 ' + relative(path);
        cell(f).appendChild(a);
        cell(f, 'muted').textContent = 'folder';
        cell(f);
        insert(f, path);
        flash(f);
        counts();
      }
      return;
    }
    var row = find(key);
    if (row && Number(row.dataset.version) >= version) {
      return; // the listing already shows this change, or a later one
    }
    if (event.type === 'delete') {
      if (row) {
        row.remove();
        counts();
      }
      return;
    }
    if (!row) {
      if (!onThisPage(key)) {
        return;
      }
      row = document.createElement('tr');
      row.className = 'key';
      row.dataset.key = key;
      var link = document.createElement('a');
      link.href = '/ui/kv/' + encodeKey(key);
      link.textContent = relative(key);
      cell(row).appendChild(link);
      cell(row, 'value');
      cell(row);
      insert(row, key);
      counts();
    }
    row.dataset.version = String(version);
    valueCell(row.cells[1], event);
    row.cells[2].textContent = String(version);
    flash(row);
  }

  function open() {
    if (source || document.hidden) {
      return;
    }
    var url = '/kv?watch=1&since=' + rev + (prefix ? '&prefix=' + encodeURIComponent(prefix) : '');
    source = new EventSource(url);
    var seen = function (message) {
      var event = JSON.parse(message.data);
      if (event.rev !== undefined && Number(event.rev) > Number(rev)) {
        rev = String(event.rev);
      }
      return event;
    };
    source.addEventListener('sync', function (m) {
      seen(m);
      say('live');
    });
    source.addEventListener('progress', function (m) {
      seen(m);
      say('live');
    });
    source.addEventListener('put', function (m) {
      apply(seen(m));
    });
    source.addEventListener('delete', function (m) {
      apply(seen(m));
    });
    source.addEventListener('reset', function () {
      close();
      location.reload();
    });
    // EventSource would reconnect by itself, but from the URL's `since`:
    // reopen from the last revision seen instead.
    source.onerror = function () {
      close();
      say('reconnecting…');
      retry = setTimeout(open, 1000);
    };
  }

  function close() {
    if (source) {
      source.close();
      source = null;
    }
    if (retry) {
      clearTimeout(retry);
      retry = null;
    }
  }

  document.addEventListener('visibilitychange', function () {
    if (document.hidden) {
      close();
      say('paused while the tab is hidden');
    } else {
      open();
    }
  });
  window.addEventListener('pagehide', close);
  open();
})();
