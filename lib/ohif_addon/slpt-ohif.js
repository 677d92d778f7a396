/*
 * SLPT add-on for the OHIF v3 build bundled with MONAI Label 0.8.5 (served by lib/ohif.py).
 *
 * That build's MONAI Label panel can connect, fetch Next Sample and run a model, but it has no Save Label
 * button, no brush, and it throws away TESLA's reason for the suggestion. This script adds a small
 * "SLPT" box on top of the panel with exactly those three things, and says there why a model left a scan
 * unsegmented when the app found it is not an abdominal CT (the panel would draw an empty overlay and call
 * it a success). It uses only what the build exposes on window (services, cornerstoneTools) and the app's
 * own REST API on the same origin.
 */
(function () {
  'use strict';

  const SEGMENTATION_ID = '1'; // the one labelmap the MONAI Label panel creates and fills
  const SUGGESTION_KEY = 'slpt.suggestion';
  // The app's /infer answer carries its out-of-distribution verdict here (lib/ohif.py): the panel asks for
  // the label alone (output=image), so the result params are not in the body.
  const OOD_HEADER = 'X-SLPT-Out-Of-Distribution';
  let flagged = null; // {study, model, reasons} of the last /infer answer that was flagged, else null
  // Same colours as the DICOM SEG the app writes (lib/dicomweb_datastore.py SEGMENT_COLORS).
  const COLORS = { liver: [221, 130, 101, 255], tumor: [144, 238, 144, 255] };

  // The panel talks to the server named in this cookie, or else to port 8000 of the page's host. This
  // page comes from the app itself, so point the panel at its origin unless the user chose otherwise.
  if (!/(^|;) ?MONAILABEL_SERVER_URL=/.test(document.cookie)) {
    document.cookie = 'MONAILABEL_SERVER_URL=' + escape(location.origin + '/') + '; path=/';
  }

  // --- TESLA's reason: kept from the Next Sample answer, across OHIF's reload onto the new study ----
  // The panel always asks for strategy "random", whatever its Strategy list shows: that build has no
  // handler for the list (onChangeStrategy is undefined). Ask for the strategy the list shows instead.
  const open = XMLHttpRequest.prototype.open;
  XMLHttpRequest.prototype.open = function (method, url) {
    const args = Array.from(arguments);
    if (/\/activelearning\/random(\?|$)/.test(String(url))) {
      const shown = document.querySelector('.monaiLabelPanel select.actionInput');
      args[1] = String(url).replace('/activelearning/random', '/activelearning/' + encodeURIComponent(shown ? shown.value : 'tesla'));
    }
    this.slptUrl = String(args[1]);
    return open.apply(this, args);
  };
  const send = XMLHttpRequest.prototype.send;
  XMLHttpRequest.prototype.send = function () {
    if (this.slptUrl && this.slptUrl.indexOf('/infer/') >= 0) {
      // The panel uses axios, i.e. XMLHttpRequest, so this sees its /infer answers (fetch is not used).
      const model = decodeURIComponent((this.slptUrl.match(/\/infer\/([^/?]+)/) || [])[1] || '');
      this.addEventListener('load', () => {
        if (this.status === 200) onInferAnswer(model, this.getResponseHeader(OOD_HEADER));
      });
      // The panel colours segments from its own table; use the colours the saved SEG will carry.
      this.addEventListener('load', () => setTimeout(() => { try { colourSegments(); } catch (e) {} }, 500));
    }
    if (this.slptUrl && this.slptUrl.indexOf('/activelearning/') >= 0) {
      this.addEventListener('load', () => {
        try {
          const answer = JSON.parse(this.responseText);
          if (answer && answer.id) {
            sessionStorage.setItem(SUGGESTION_KEY, JSON.stringify(answer));
            render();
          }
        } catch (e) {
          /* not JSON: the panel shows the error itself */
        }
      });
    }
    return send.apply(this, arguments);
  };

  // --- a flagged scan: why the overlay is empty ----------------------------------------------------------
  /** Keeps the verdict of an /infer answer (a JSON header, absent where the app checks nothing) and tells. */
  function onInferAnswer(model, header) {
    let verdict = null;
    try {
      verdict = header ? JSON.parse(header) : null;
    } catch (e) {
      /* malformed: treat as no verdict rather than break the panel */
    }
    flagged = verdict && verdict.flagged
      ? { study: currentStudy(), model: model, reasons: verdict.reasons || [] }
      : null; // a later answer that was segmented clears an earlier warning
    render();
    if (flagged && window.services && window.services.uiNotificationService) {
      // The panel itself will still say "Running Segmentation - Successful"; this toast says what that means.
      window.services.uiNotificationService.show({
        title: 'SLPT - ' + model + ': scan not segmented',
        message: oodText() + ' ' + flagged.reasons.join('; '),
        type: 'warning',
        duration: 15000,
      });
    }
  }

  function oodText() {
    return 'Not segmented: this scan does not look like an abdominal CT, so ' + flagged.model +
      ' returned an empty label.';
  }

  /** The warning in the box, while the flagged scan's study is open; hidden otherwise. */
  function renderOod() {
    const el = box.querySelector('#slpt-ood-reason');
    box.dataset.study = currentStudy() || '';
    const shown = !!flagged && flagged.study === currentStudy();
    el.hidden = !shown;
    el.textContent = '';
    if (!shown) return;
    const head = document.createElement('div');
    head.textContent = oodText();
    const list = document.createElement('ul');
    list.setAttribute('style', 'margin:2px 0 0 14px;padding:0');
    for (const reason of flagged.reasons) {
      const item = document.createElement('li');
      item.textContent = reason; // text, not HTML: the reasons come from the server
      list.appendChild(item);
    }
    el.append(head, list);
  }

  function currentStudy() {
    return new URLSearchParams(location.search).get('StudyInstanceUIDs');
  }

  function reasonText() {
    const s = JSON.parse(sessionStorage.getItem(SUGGESTION_KEY) || 'null');
    if (!s || !s.tesla) {
      return 'No TESLA suggestion yet: open Active Learning and click Next Sample.';
    }
    const t = s.tesla;
    const parts = ['round ' + t.round, 'stage ' + t.stage, 'rank ' + t.rank];
    if (t.uncertainty !== null && t.uncertainty !== undefined) {
      parts.push('score (prompt uncertainty) ' + Number(t.uncertainty).toFixed(4));
    }
    if (t.cluster !== undefined) parts.push('cluster ' + t.cluster);
    const here = s.StudyInstanceUID === currentStudy() ? 'this study' : 'study ' + s.StudyInstanceUID;
    return 'TESLA suggested ' + here + ': ' + parts.join(', ') + ' (' + (t.basis || '') + ')';
  }

  // --- the box ---------------------------------------------------------------------------------------
  const box = document.createElement('div');
  box.id = 'slpt-box';
  box.setAttribute(
    'style',
    'position:fixed;right:4px;bottom:4px;width:300px;background:#0b1a42;color:#ddd;border:1px solid #3a5ba0;' +
      'padding:6px;font:12px sans-serif;z-index:10'  // under OHIF's toasts and dialogs
  );
  box.innerHTML =
    '<div style="font-weight:bold;color:#5acce6">SLPT</div>' +
    '<div id="slpt-reason" style="margin:4px 0"></div>' +
    '<div id="slpt-ood-reason" class="slpt-ood-reason" role="alert" hidden style="margin:4px 0;padding:4px;' +
      'border:1px solid #e0a030;background:#3a2a05;color:#ffd27a"></div>' +
    '<div>Brush: <button id="slpt-brush-liver">Liver</button> <button id="slpt-brush-tumor">Tumour</button>' +
    ' <button id="slpt-brush-erase">Eraser</button> <button id="slpt-brush-off">Off</button></div>' +
    '<div style="margin-top:4px"><button id="slpt-save" style="font-weight:bold">Save label</button></div>' +
    '<div id="slpt-status" style="margin-top:4px"></div>';

  function render() {
    box.querySelector('#slpt-reason').textContent = reasonText();
    renderOod();
  }

  function status(text, ok) {
    const el = box.querySelector('#slpt-status');
    el.textContent = text;
    el.style.color = ok === false ? '#f88' : '#8f8';
    el.dataset.state = ok === false ? 'error' : ok === true ? 'ok' : 'busy';
  }

  // A fixed box at the bottom of the right-hand panel column, below the MONAI Label panel. It is not
  // put inside the panel: React owns that DOM and may drop or trip over a foreign child.
  // Shown in the MONAI Label mode only (OHIF changes routes without reloading the page).
  setInterval(() => {
    // The panel's list starts at its hard-coded "random", which the app now offers too; start it at the
    // app's default, TESLA, once. What the user picks afterwards is what Next Sample asks for.
    const list = document.querySelector('.monaiLabelPanel select.actionInput');
    if (list && !list.dataset.slptStarted && Array.from(list.options).some((o) => o.value === 'tesla')) {
      list.value = 'tesla';
      list.dataset.slptStarted = '1';
    }
    const wanted = location.pathname.indexOf('/monai-label') >= 0;
    if (wanted && !box.parentElement && document.body) {
      document.body.appendChild(box);
      render();
    } else if (!wanted && box.parentElement) {
      box.remove();
    } else if (flagged && box.parentElement && box.dataset.study !== currentStudy()) {
      renderOod(); // another study opened without a reload: its overlay is not the flagged one
    }
  }, 300);

  // --- the labelmap ------------------------------------------------------------------------------------
  function services() {
    if (!window.services) throw new Error('OHIF is not ready yet');
    return window.services;
  }

  function labelmap() {
    const volume = services().segmentationService.getLabelmapVolume(SEGMENTATION_ID);
    if (!volume) {
      throw new Error('no segmentation yet: connect the MONAI Label panel (refresh button) first');
    }
    return volume;
  }

  /** {segment label name: OHIF segment index} of the panel's segmentation. */
  function segmentsByName() {
    const seg = services().segmentationService.getSegmentation(SEGMENTATION_ID);
    const out = {};
    for (const s of Object.values((seg && seg.segments) || {})) {
      if (s && s.label) out[s.label] = s.segmentIndex;
    }
    return out;
  }

  function colourSegments() {
    const cst = window.cornerstoneTools;
    const byName = segmentsByName();
    for (const vp of services().cornerstoneViewportService.getViewportIds()) {
      for (const [name, rgba] of Object.entries(COLORS)) {
        if (byName[name]) cst.segmentation.config.color.setSegmentIndexColor(vp, SEGMENTATION_ID, byName[name], rgba);
      }
    }
  }

  function setBrush(kind) {
    const cst = window.cornerstoneTools;
    const primary = cst.Enums.MouseBindings.Primary;
    const tool = kind === 'erase' ? 'CircularEraser' : kind === 'off' ? 'WindowLevel' : 'CircularBrush';
    if (kind === 'liver' || kind === 'tumor') {
      labelmap();
      const index = segmentsByName()[kind];
      if (!index) throw new Error('the segmentation has no segment named ' + kind);
      cst.segmentation.segmentIndex.setActiveSegmentIndex(SEGMENTATION_ID, index);
      colourSegments();
    }
    for (const group of cst.ToolGroupManager.getAllToolGroups()) {
      if (!group.hasTool(tool)) continue;
      const current = group.getActivePrimaryMouseButtonTool();
      if (current && current !== tool) group.setToolPassive(current);
      group.setToolActive(tool, { bindings: [{ mouseButton: primary }] });
    }
    status(kind === 'off' ? 'Brush off (window/level on the left button)' : 'Brush: ' + kind, true);
  }

  /** NRRD (raw uint8) of the labelmap in its own LPS geometry; voxel values are the app's label values. */
  function labelmapAsNrrd(volume, appLabels) {
    const byName = segmentsByName();
    const remap = new Uint8Array(256);
    // The panel's segmentation also lists other models' labels (the backbone's organs); only the
    // app's own labels are saved, anything painted with another segment counts as background.
    for (const [name, index] of Object.entries(byName)) {
      if (name in appLabels) remap[index] = appLabels[name];
    }
    const data = volume.voxelManager.getCompleteScalarDataArray();
    const out = new Uint8Array(data.length);
    let painted = 0;
    for (let i = 0; i < data.length; i++) {
      out[i] = remap[data[i]];
      if (out[i]) painted++;
    }
    const [sx, sy, sz] = volume.spacing;
    const d = volume.direction; // rows: directions of the i, j and k axes
    const vec = (k, s) => '(' + [d[3 * k] * s, d[3 * k + 1] * s, d[3 * k + 2] * s].join(',') + ')';
    const header =
      'NRRD0004\ntype: uint8\ndimension: 3\nspace: left-posterior-superior\n' +
      'sizes: ' + volume.dimensions.join(' ') + '\n' +
      'space directions: ' + [vec(0, sx), vec(1, sy), vec(2, sz)].join(' ') + '\n' +
      'kinds: domain domain domain\nendian: little\nencoding: raw\n' +
      'space origin: (' + Array.from(volume.origin).join(',') + ')\n\n';
    return { blob: new Blob([header, out], { type: 'application/octet-stream' }), painted: painted };
  }

  function currentSeries() {
    const sets = services().displaySetService.getActiveDisplaySets();
    const image = sets.find(ds => ds.Modality !== 'SEG' && ds.isReconstructable) || sets[0];
    if (!image) throw new Error('no image series is open');
    return image.SeriesInstanceUID;
  }

  async function save() {
    status('Saving…');
    const info = await (await fetch('/info/')).json();
    const volume = labelmap();
    const { blob, painted } = labelmapAsNrrd(volume, info.models.slpt.labels);
    if (!painted) throw new Error('nothing to save: run SLPT or paint liver/tumour first');
    const series = currentSeries();
    const form = new FormData();
    form.append('label', blob, 'label.nrrd');
    form.append('params', JSON.stringify({ client: 'ohif', painted_voxels: painted }));
    const url = '/datastore/label?tag=final&image=' + encodeURIComponent(series);
    const r = await fetch(url, { method: 'PUT', body: form });
    const body = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error('save refused (' + r.status + '): ' + (body.detail || r.statusText));
    const after = await (await fetch('/info/')).json();
    const counts = (after.slpt && after.slpt.datastore) || {};
    status('Saved as final label of series ' + series + ' (' + painted + ' voxels). Labelled scans: ' +
      counts.labelled + ', unlabelled: ' + counts.unlabelled, true);
  }

  function guarded(fn) {
    return () => Promise.resolve().then(fn).catch(e => status(String(e.message || e), false));
  }

  box.querySelector('#slpt-save').addEventListener('click', guarded(save));
  for (const kind of ['liver', 'tumor', 'erase', 'off']) {
    box.querySelector('#slpt-brush-' + kind).addEventListener('click', guarded(() => setBrush(kind)));
  }
  window.slpt = { save: save, setBrush: setBrush, colourSegments: colourSegments }; // for the browser test
})();
